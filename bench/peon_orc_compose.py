"""What the original PEON orchestrator produces for each recipe, computed by its own code.

Run by bench/import_corpus.py in a subprocess of its own:

    python bench/peon_orc_compose.py ORC_CHECKOUT RECIPES_DIR OUT_DIR < requests.json

ORC_CHECKOUT is a checkout of the-peon-project/peon-orc; nothing of it is copied here: its
app/modules/plans.py is imported and its `create_new_warcamp` (copy the recipe, consolidate
the settings, take the first port group, write docker-compose.yml) runs against a scratch
servers folder in OUT_DIR. requests.json is {game_uid: {SETTING: value}} (the values for the
recipe's null settings). Printed, one JSON object: {game_uid: {"status", "compose", "info",
"folders": {folder: {relative path: sha256}}}}, the folders being what the original copied
into the server's folder and then mounts.

Only what the original's import needs but cannot have here is stood in for: the Docker,
GitPython and requests modules (unused by the functions called), its shell (chown/chmod of
the scratch folder) and its fixed /app/ paths, which point into the checkout.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

HOST_DIR = "/peon-host"  # the original's HOST_DIR: where its server folders are on the host


def _stand_ins(app: Path) -> None:
    for name in ("docker", "git", "requests"):
        module = types.ModuleType(name)
        module.from_env = lambda *a, **k: None  # type: ignore[attr-defined]
        module.Repo = object  # type: ignore[attr-defined]
        module.get = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules[name] = module
    real_open = builtins.open

    def app_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        # The original reads /app/config.json and /app/dictionary.json at import time.
        if isinstance(file, str) and file.startswith("/app/"):
            file = str(app / file[len("/app/") :])
        return real_open(file, *args, **kwargs)

    builtins.open = app_open


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main() -> int:
    checkout, recipes, out = (Path(a).resolve() for a in sys.argv[1:4])
    app = checkout / "app"
    requests = json.load(sys.stdin)
    _stand_ins(app)
    sys.path.insert(0, str(app))
    os.environ["HOST_DIR"] = HOST_DIR
    import modules  # noqa: PLC0415 - the original's package, from the checkout
    import modules.plans as plans  # noqa: PLC0415

    servers = out / "servers"
    servers.mkdir(parents=True, exist_ok=True)
    # update_build_file maps the servers folder of the original's settings onto HOST_DIR.
    modules.settings["path"]["servers"] = str(servers)
    plans.execute_shell = lambda **kwargs: ""  # its chown/chmod of the server folder
    config = {"path": {"servers": str(servers), "plans": str(recipes)}, "settings": {}}
    results: dict[str, Any] = {}
    for uid, values in requests.items():
        server_path = servers / uid / "w1"
        settings = {"game_uid": uid, "warcamp": "w1", "server_path": str(server_path), **values}
        entry: dict[str, Any] = {}
        try:
            result = plans.create_new_warcamp(config_peon=config, user_settings=settings)
            entry["status"] = result.get("status")
            entry["info"] = result.get("info")
        except Exception as e:  # the original's own failure is a result to report
            entry["status"] = "exception"
            entry["info"] = f"{type(e).__name__}: {e}"
        compose = server_path / "docker-compose.yml"
        if compose.is_file():
            import yaml  # noqa: PLC0415

            entry["compose"] = yaml.safe_load(compose.read_text())
            entry["folders"] = {
                p.name: _digest_tree(p) for p in sorted(server_path.iterdir()) if p.is_dir()
            }
            entry["root_files"] = sorted(p.name for p in server_path.iterdir() if p.is_file())
        results[uid] = entry
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
