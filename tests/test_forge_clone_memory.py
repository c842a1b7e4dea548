"""What README's Forge memory figure claims, checked: ToDo's attach holds no second copy of the weights another
extension's patch holds (an IP-Adapter's attn2 replacements), where the hosts' clone() copies them all; and the script
that measures the figure (tests/forge_stub/clone_memory.py) runs and shows it in resident memory."""

import json
import subprocess
import sys

from forge_stub import clone_memory

import todo_ext
from todo_ext.hosts import forge


def test_todos_attach_keeps_the_same_adapter_weights_in_the_clones_model_options():
    sd_model, adapter = clone_memory.forge_model_with_ip_adapter()
    original = sd_model.forge_objects.unet
    forge.attach(sd_model, todo_ext.ToDoConfig(), set())
    attached = sd_model.forge_objects.unet
    assert attached is not original
    replacements = clone_memory.attn2_replacements(original)
    assert clone_memory.attn2_replacements(attached).keys() == replacements.keys()
    assert all(patch is replacements[key] for key, patch in clone_memory.attn2_replacements(attached).items())
    assert clone_memory.copied_parameters(adapter, attached) == 0


def test_the_hosts_clone_copies_every_adapter_weight():
    """The same count sees the host's deep copy: the check above can fail."""
    sd_model, adapter = clone_memory.forge_model_with_ip_adapter()
    clone = sd_model.forge_objects.unet.clone()
    assert clone_memory.copied_parameters(adapter, clone) == sum(p.numel() for p in adapter.parameters())


def test_the_memory_script_shows_the_hosts_copy_and_none_for_todo_in_resident_memory():
    run = subprocess.run([sys.executable, clone_memory.__file__, "--repeats", "1", "--json"], capture_output=True,
                         text=True, check=True)
    result = json.loads(run.stdout)
    growth = {row["clone"]: row["rss_growth_bytes"][0] for row in result["rows"]}
    host = growth.pop(next(name for name in growth if name.startswith("host")))
    assert host >= 0.95 * result["adapter_bytes"]
    assert all(bytes_held < 0.05 * result["adapter_bytes"] for bytes_held in growth.values()), growth
