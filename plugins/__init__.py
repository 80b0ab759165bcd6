"""Built-in lakeloom plugins, one module each, registered in the ``lakeloom.plugins`` group."""
