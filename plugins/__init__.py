"""The built-in plugins. Each module is a plugin, registered exactly as a third-party one is."""
