"""convex_attention.io.environment: the record of where a number was measured."""
import json

import torch

from convex_attention.io.environment import cpu_name, environment


def test_the_record_names_versions_processor_threads_and_device_and_is_json():
    env = environment("cpu")
    for key in ("python", "torch", "numpy", "platform", "processor", "cpu_count", "torch_threads", "device"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["device"] == "cpu" and "gpu" not in env
    assert json.loads(json.dumps(env)) == env
    assert cpu_name() and isinstance(cpu_name(), str)
