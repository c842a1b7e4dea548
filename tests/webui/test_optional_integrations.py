"""No optional integration (Settings, X/Y/Z axes, API validation, the K/V preview's layout route) can stop ToDo from
loading: the script is loaded
against host layouts that lack one, says once what is missing, and still generates and writes its infotext.

The X/Y/Z layouts are the stand-ins of the hosts' files, loaded the way modules/scripts.py loads scripts: A1111's
scripts/xyz_grid.py (also Forge's, reForge's, Forge Neo's) and Forge Classic's extensions-builtin/xyz.
"""

import copy
import types
from pathlib import Path

import pytest
import torch

from todo_ext.args import ToDoArgs
from todo_ext.bench.models import LatentDiffusionShell, build_unet

STUB = Path(__file__).resolve().parents[1] / "webui_stub"
A1111_XYZ = (str(STUB / "scripts" / "xyz_grid.py"), str(STUB))
CLASSIC_XYZ_DIR = STUB / "extensions-builtin" / "xyz"
CLASSIC_XYZ = (str(CLASSIC_XYZ_DIR / "scripts" / "xyz_grid.py"), str(CLASSIC_XYZ_DIR))
TODO_AXES = ["[ToDo] Enabled", "[ToDo] Ratio", "[ToDo] Hires ratio", "[ToDo] Max depth", "[ToDo] Deeper ratio",
             "[ToDo] Method"]


@pytest.fixture(scope="module")
def unet():
    return build_unet("sd15", width=32)


def generate(todo_script, unet, *, cell=None):
    """One 128 px txt2img job with ToDo on (args as the API sends them); `cell(p)` may change the job first, as an
    X/Y/Z cell does. Returns the image's infotext."""
    from modules import processing, scripts, shared

    script = todo_script.ToDoScript()
    runner = scripts.ScriptRunner([script])
    shared.sd_model = LatentDiffusionShell(unet)
    p = processing.StableDiffusionProcessingTxt2Img(
        shared.sd_model, runner, runner.api_script_args(script, ToDoArgs(enabled=True).to_list()), width=128,
        height=128)
    if cell is not None:
        p = copy.copy(p)
        cell(p)
    context = torch.zeros(1, 77, 768)

    def sample(p, x):
        return p.sd_model.model.diffusion_model(x, torch.full((1,), 500.0), context)

    processed = processing.process_images(p, sample)
    assert not runner.reported
    return processed.infotexts[0]


def todo_lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[ToDo]")]


def xyz_module():
    from modules import scripts

    return next(data.module for data in scripts.scripts_data if data.script_class.__module__ == "xyz_grid.py")


class FakeApp:
    """What the script's app_started callbacks use of the WebUI's FastAPI app: its routes and how to add one."""

    def __init__(self):
        self.routes = []
        self.exception_handlers = {}

    def add_exception_handler(self, *args):
        pass

    def add_api_route(self, path, endpoint, methods):
        self.routes.append(types.SimpleNamespace(path=path, endpoint=endpoint, methods=methods))


def run_every_callback(app=None):
    """The callbacks the WebUI runs after loading scripts (each one twice, as a UI reload does)."""
    from modules import script_callbacks

    app = app or FakeApp()
    for _ in range(2):
        script_callbacks.ui_settings_callback()
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app)


@pytest.mark.parametrize("xyz_first", [True, False], ids=["xyz-loaded-first", "xyz-loaded-later"])
@pytest.mark.parametrize("layout", [A1111_XYZ, CLASSIC_XYZ], ids=["a1111", "classic"])
def test_axes_registered_with_boolean_choices_on_each_layout(webui_host, unet, capsys, layout, xyz_first):
    """Forge Classic's xyz_grid module has no boolean_choice (it is in lib_xyz.utils): the axes are added there too,
    with the host's choices, at load or at before_ui, once."""
    from modules import scripts

    if xyz_first:
        scripts.load_scripts([layout])
    todo_script = webui_host()
    if not xyz_first:
        scripts.load_scripts([layout])
    run_every_callback()

    xyz_grid = xyz_module()
    assert [opt.label for opt in xyz_grid.axis_options] == ["Nothing", *TODO_AXES]
    enabled = xyz_grid.axis_options[1]
    assert enabled.choices() == ["False", "True"]
    host_utils = "lib_xyz.utils" if layout is CLASSIC_XYZ else "xyz_grid.py"
    assert enabled.choices.__module__ == host_utils
    assert todo_lines(capsys) == []

    infotext = generate(todo_script, unet, cell=lambda p: xyz_grid.axis_options[2].apply(p, 0.9375, []))
    assert "ToDo: True" in infotext and "ToDo ratio: 0.9375" in infotext


def test_classic_layout_is_the_one_that_lacks_boolean_choice(webui_host):
    from modules import scripts

    scripts.load_scripts([CLASSIC_XYZ])
    webui_host()
    xyz_grid = xyz_module()
    assert xyz_grid.__name__ == "xyz_grid.py" and not hasattr(xyz_grid, "boolean_choice")
    assert [data.script_class for data in scripts.scripts_data] == [xyz_grid.XYZ]
    assert xyz_grid.AxisOption.__module__ == "lib_xyz.classes"


def test_own_boolean_choices_where_the_host_has_none(webui_host):
    """An xyz_grid module without boolean_choice and no lib_xyz to import: ToDo offers the same choices itself."""
    from modules import scripts

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.choices = label, choices

    xyz_grid = types.SimpleNamespace(axis_options=[], AxisOption=AxisOption)
    xyz_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts.scripts_data.append(scripts.ScriptClassData(xyz_class, "xyz_grid.py", ".", xyz_grid))
    webui_host()
    assert [opt.label for opt in xyz_grid.axis_options] == TODO_AXES
    assert xyz_grid.axis_options[0].choices() == ["False", "True"]


def test_no_xyz_at_all_says_so_once_at_before_ui(webui_host, unet, capsys):
    """At load the X/Y/Z script may still be loaded later (no line); before_ui knows it is missing."""
    todo_script = webui_host()
    assert todo_lines(capsys) == []
    run_every_callback()
    assert todo_lines(capsys) == ["[ToDo] X/Y/Z axes not added (no X/Y/Z plot script loaded); the rest of ToDo works"]
    assert "ToDo: True" in generate(todo_script, unet)


def test_xyz_module_without_axis_option_says_so_once_per_load(webui_host, unet, capsys):
    from modules import scripts

    xyz_grid = types.ModuleType("xyz_grid.py")
    xyz_grid.axis_options = []
    xyz_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts.scripts_data.append(scripts.ScriptClassData(xyz_class, "xyz_grid.py", ".", xyz_grid))
    todo_script = webui_host()
    run_every_callback()
    assert todo_lines(capsys) == ["[ToDo] X/Y/Z axes not added (module 'xyz_grid.py' has no attribute "
                                  "'AxisOption'); the rest of ToDo works"]
    assert xyz_grid.axis_options == []
    assert "ToDo: True" in generate(todo_script, unet)


def test_settings_that_cannot_be_registered_say_so_once(webui_host, unet, capsys):
    """A host whose shared.opts.add_option raises: the controls take the built-in defaults."""
    from modules import scripts, shared

    def add_option(key, info):
        raise RuntimeError("options are read-only")

    shared.opts.add_option = add_option
    scripts.load_scripts([A1111_XYZ])
    todo_script = webui_host()
    run_every_callback()
    assert todo_lines(capsys) == ["[ToDo] Settings > ToDo not added (options are read-only); the rest of ToDo works"]
    assert [control.value for control in todo_script.ToDoScript().ui(False)] == ToDoArgs().to_list()
    assert "ToDo: True" in generate(todo_script, unet)


def test_api_validation_that_cannot_install_says_so_once(webui_host, unet, capsys):
    from modules import script_callbacks

    todo_script = webui_host()
    for _ in range(2):
        script_callbacks.app_started_callback(None, object())
    lines = todo_lines(capsys)
    assert [line.split(" (")[0] for line in lines] == ["[ToDo] API validation of ToDo args not installed",
                                                       "[ToDo] K/V preview of the loaded model's layout not served"]
    assert all(line.endswith("); the rest of ToDo works") for line in lines)
    assert "ToDo: True" in generate(todo_script, unet)


def test_nothing_optional_attaches_and_todo_still_works(webui_host, unet, capsys):
    """Settings, X/Y/Z and API validation all fail on one host: one line for each, and the job is ToDo's."""
    from modules import script_callbacks, shared

    def add_option(key, info):
        raise RuntimeError("options are read-only")

    shared.opts.add_option = add_option
    todo_script = webui_host()
    for _ in range(2):
        script_callbacks.ui_settings_callback()
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, object())
    lines = todo_lines(capsys)
    assert [line.split(" (")[0] for line in lines] == ["[ToDo] Settings > ToDo not added",
                                                       "[ToDo] X/Y/Z axes not added",
                                                       "[ToDo] API validation of ToDo args not installed",
                                                       "[ToDo] K/V preview of the loaded model's layout not served"]
    infotext = generate(todo_script, unet)
    assert "ToDo: True" in infotext and "ToDo K/V: d0 16x16->8x8 (2x)" in infotext


def test_ui_builds_where_input_accordion_is_a_function(webui_host, unet):
    """Forge Neo's InputAccordion is a function returning InputAccordionImpl; the script never uses it as a class."""
    from modules import ui_components

    ui_components.InputAccordion = ui_components.neo_input_accordion
    todo_script = webui_host()
    controls = todo_script.ToDoScript().ui(False)
    assert controls[0].value is False and controls[0].accordion.kwargs["open"] is False
    assert [control.value for control in controls] == ToDoArgs().to_list()
    assert "ToDo: True" in generate(todo_script, unet)


def test_the_layout_route_serves_the_model_loaded_now(webui_host):
    """The K/V preview asks the server what is loaded: a U-Net's attention levels (SD1.x from latent/1, SDXL from
    latent/2), or unknown (nothing ToDo knows, or no model yet), read without loading a model."""
    from modules import shared

    webui_host()
    app = FakeApp()
    run_every_callback(app)
    [route] = [route for route in app.routes if route.path == "/todo/v1/layout"]
    shared.sd_model = None
    assert route.endpoint() == {"kind": "unknown"}
    shared.sd_model = LatentDiffusionShell(build_unet("sd15", width=32))
    assert route.endpoint() == {"kind": "unet", "levels": [0, 1, 2, 3]}
    shared.sd_model = LatentDiffusionShell(build_unet("sdxl", width=32))
    assert route.endpoint() == {"kind": "unet", "levels": [1, 2]}
    shared.sd_model = LatentDiffusionShell(torch.nn.Linear(4, 4))
    assert route.endpoint() == {"kind": "unknown"}
