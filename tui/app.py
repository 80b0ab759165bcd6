"""The lakeloom Textual app: a registry of declared screens over one lake and a runs folder.

Each screen of ``conf/tui`` (``screens:``) is a Textual mode, built on first use, so
opening the app reads nothing but the lake's metadata, in a worker. The app owns the
:class:`~tui.lake_data.LakeView`; screens watch ``lake_generation`` and reload when the
view opens or is re-pinned. A newer lake version (someone writing while we browse) is
announced, never applied under the user's feet: the reload key re-pins.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Input

from tui.bindings import install
from tui.config import TuiConfig, import_object
from tui.screens.base import ConfiguredScreen, LakeScreenBase

if TYPE_CHECKING:
    from tui.lake_data import LakeView


class LakeloomApp(App):
    """Browse the lake and the training runs."""

    CSS_PATH = "lakeloom.tcss"
    TITLE = "lakeloom"
    ENABLE_COMMAND_PALETTE = True

    lake_generation: reactive[int] = reactive(0, init=False)

    def __init__(self, config: TuiConfig, graphics: str = "halfblock") -> None:
        if not config.screens:
            raise ValueError("tui.screens declares no screen")
        # the first declared screen is the one the app opens on
        self.DEFAULT_MODE = next(iter(config.screens))
        super().__init__()
        self.config = config
        self.graphics = graphics
        self.view: LakeView | None = None
        self.lake_error: str | None = None
        self.lake_stale = False
        for name in config.screens:
            self.add_mode(name, partial(self.make_screen, name))
        install(self, config.bindings.get("app", []))
        self.set_keymap(config.keymap)
        if config.theme in self.available_themes:
            self.theme = config.theme
        self.sub_title = config.lake_uri

    # -- screens --------------------------------------------------------------------------
    def make_screen(self, name: str) -> Screen:
        """Build the declared screen ``name`` (its module is imported only now)."""
        from tui.screens.message import MessageScreen

        spec = self.config.screens[name]
        try:
            screen = import_object(spec.target)(**spec.args, config=self.config)
        except Exception as exc:  # a broken plugin screen must not take the app down
            return MessageScreen(spec.title, f"Cannot open {spec.title}: {exc}")
        if not isinstance(screen, ConfiguredScreen):  # those install their own scope
            install(screen, self.config.bindings.get(name, []))
        screen.title = screen.title or spec.title
        return screen

    def action_open(self, name: str) -> None:
        """Switch to the declared screen ``name``."""
        if name in self.config.screens:
            self.switch_mode(name)
        else:
            self.notify(f"no screen {name!r} in tui.screens", severity="warning")

    async def action_back(self) -> None:
        """Leave an input, close the top screen, or return to the first screen."""
        screen = self.screen
        if isinstance(screen, LakeScreenBase) and screen.back():
            return
        if isinstance(self.focused, Input):
            screen.set_focus(None)
        elif len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.current_mode != self.DEFAULT_MODE:
            self.switch_mode(self.DEFAULT_MODE)

    def action_help(self) -> None:
        """Show the bindings of the current screen."""
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette: every declared screen, every action bound here, Textual's own."""
        commands = [
            SystemCommand(f"Open {spec.title}", spec.description, partial(self.action_open, name))
            for name, spec in self.config.screens.items()
        ]
        for active in screen.active_bindings.values():
            b = active.binding
            if b.system or not b.description or b.action.startswith("open("):
                continue  # the screens are listed above
            help_text = f"key {self.get_key_display(b)}" + (f" · {b.id}" if b.id else "")
            commands.append(
                SystemCommand(
                    b.description, help_text, partial(self.run_action, b.action, active.node)
                )
            )
        commands += super().get_system_commands(screen)
        seen: set[str] = set()
        for command in commands:  # one entry per title (quit has two keys, Textual a third)
            if command.title not in seen:
                seen.add(command.title)
                yield command

    # -- the lake -------------------------------------------------------------------------
    def on_mount(self) -> None:
        if self.theme != self.config.theme:
            self.notify(f"unknown theme {self.config.theme!r}", severity="warning")
        self.open_lake()
        if self.config.lake_poll_s > 0:
            self.set_interval(self.config.lake_poll_s, self.check_lake)

    @work(thread=True, group="lake", exclusive=True, exit_on_error=False)
    def open_lake(self) -> None:
        """Open (or re-pin) the lake view; never raises into the UI."""
        from lake.storage import redact_text
        from tui.lake_data import LakeUnavailable, LakeView

        view, error = self.view, None
        try:
            if view is None:
                view = LakeView(
                    self.config.lake_uri,
                    page_cache=self.config.page_cache,
                    model=self.config.search_model,
                    storage_options=self.config.storage_options,
                )
            else:
                view.refresh()
        except LakeUnavailable as exc:
            view, error = None, str(exc)
        except Exception as exc:  # a damaged lake: say what, keep the runs screens usable
            reason = redact_text(str(exc), self.config.storage_options)  # may echo keys
            view, error = None, f"cannot open the lake at {self.config.lake_uri}: {reason}"
        self.call_from_thread(self._lake_opened, view, error)

    def _lake_opened(self, view: LakeView | None, error: str | None) -> None:
        self.view, self.lake_error, self.lake_stale = view, error, False
        self.sub_title = (
            f"{self.config.lake_uri} @ v{view.version}"
            if view
            else f"{self.config.lake_uri}: no lake"
        )
        self.lake_generation += 1

    @work(thread=True, group="lake-poll", exclusive=True, exit_on_error=False)
    def check_lake(self) -> None:
        """Whether a newer lake version exists (cheap: reads the manifest list)."""
        view = self.view
        if view is not None and not self.lake_stale and view.changed():
            self.call_from_thread(self._lake_changed)

    def _lake_changed(self) -> None:
        if self.lake_stale:
            return
        self.lake_stale = True
        self.sub_title = f"{self.config.lake_uri} @ v{self.view.version} (changed: reload)"
        keys = ", ".join(self.get_key_display(b) for _, b in self._bindings if b.action == "reload")
        self.notify(
            f"The lake has changed since it was opened. Press {keys or 'reload'} to see it.",
            title="Lake changed",
            timeout=10,
        )

    def action_reload(self) -> None:
        """Re-pin the latest lake version (or retry opening a missing lake)."""
        self.open_lake()

    def lake_written(self) -> None:
        """This app wrote to the lake (a review): re-pin without the 'changed' notice."""
        self.lake_stale = True  # silences the poll until the re-pin lands
        self.open_lake()
