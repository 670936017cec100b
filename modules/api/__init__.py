"""HTTP APIs beside the page: siblings of the tabs that call the same wrappers through the same manager."""
