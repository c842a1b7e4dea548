"""Stand-in of modules/script_callbacks.py: the registrations the script makes and the calls that run them."""

callback_map = {
    "callbacks_app_started": [],
    "callbacks_ui_settings": [],
    "callbacks_before_ui": [],
    "callbacks_script_unloaded": [],
}


def clear_callbacks():
    """Mirrors script_callbacks.clear_callbacks (run before scripts are reloaded)."""
    for callback_list in callback_map.values():
        callback_list.clear()


def on_app_started(callback, *, name=None):
    """Mirrors script_callbacks.on_app_started: callback(demo, app) once the FastAPI app exists."""
    callback_map["callbacks_app_started"].append(callback)


def on_ui_settings(callback, *, name=None):
    """Mirrors script_callbacks.on_ui_settings."""
    callback_map["callbacks_ui_settings"].append(callback)


def on_before_ui(callback, *, name=None):
    """Mirrors script_callbacks.on_before_ui."""
    callback_map["callbacks_before_ui"].append(callback)


def on_script_unloaded(callback, *, name=None):
    """Mirrors script_callbacks.on_script_unloaded."""
    callback_map["callbacks_script_unloaded"].append(callback)


def app_started_callback(demo, app):
    """Mirrors script_callbacks.app_started_callback."""
    for callback in callback_map["callbacks_app_started"]:
        callback(demo, app)


def ui_settings_callback():
    """Mirrors script_callbacks.ui_settings_callback."""
    for callback in callback_map["callbacks_ui_settings"]:
        callback()


def before_ui_callback():
    """Mirrors script_callbacks.before_ui_callback."""
    for callback in callback_map["callbacks_before_ui"]:
        callback()


def script_unloaded_callback():
    """Mirrors script_callbacks.script_unloaded_callback."""
    for callback in callback_map["callbacks_script_unloaded"]:
        callback()
