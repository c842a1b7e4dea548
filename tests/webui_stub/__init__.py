"""A minimal stand-in of the AUTOMATIC1111 WebUI v1.10.1 API (commit 82a973c0), just what scripts/ imports.

Each stand-in names the WebUI file and function it mirrors; tests/conftest.py puts `modules` and `gradio` from
here on sys.modules for the glue tests only.
"""
