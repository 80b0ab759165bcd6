"""Key bindings declared in ``conf/tui`` (``bindings:``), installed on screens and the app.

Textual reads ``BINDINGS`` from classes; declared bindings belong to an instance, so they
are added to the node's own bindings map. A declared key replaces a class binding on the
same key. Users remap any binding by id with ``tui.keymap`` (Textual's keymap).
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.binding import Binding
from textual.dom import DOMNode

from tui.config import BindingSpec


def to_binding(spec: BindingSpec) -> Binding:
    """A Textual binding of a declared one."""
    return Binding(
        spec.key,
        spec.action,
        spec.description,
        show=spec.show,
        priority=spec.priority,
        id=spec.id,
    )


def install(node: DOMNode, specs: Iterable[BindingSpec]) -> None:
    """Add the declared bindings to ``node`` (a screen, a widget or the app)."""
    # the map is a shallow copy of the class-wide one: assign new lists, never append
    keys = node._bindings.key_to_bindings
    for binding in Binding.make_bindings(to_binding(s) for s in specs):
        keys[binding.key] = [binding]
