"""Stand-in of the WebUI's `modules` package (v1.10.1)."""
