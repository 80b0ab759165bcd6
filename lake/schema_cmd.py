"""``lakeloom schema``: print the lake schema as Markdown tables."""

from __future__ import annotations

from lake.schema import schema_markdown


def main() -> None:
    """Print the schema."""
    print(schema_markdown(), end="")


if __name__ == "__main__":
    main()
