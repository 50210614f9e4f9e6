"""The plugin corpus as the tests see it: built modules (by key "<sdk>/<name>") and behaviour specs."""
