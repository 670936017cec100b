"""Start-up stays light: building the whole UI imports no model library (they load on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

BUILD_THE_APP = """
import json, sys
import app
from modules.catalog import load_catalog
from modules.memory import MemoryManager
from modules.serving import FairQueue, Serving
from modules.wrappers import wrapper_tasks
from modules.wrappers.base import HostSettings
catalog = load_catalog("models.yaml", wrapper_tasks())
manager = MemoryManager("cpu")
app.build_app(catalog, manager, app.build_wrappers(catalog, manager, HostSettings()), Serving(FairQueue()))
print(json.dumps(sorted(name for name in ("torch", "transformers", "diffusers", "llama_cpp", "gguf") if name in sys.modules)))
"""


def test_building_every_tab_imports_no_model_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BUILD_THE_APP], cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
