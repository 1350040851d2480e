"""Build monitor/models/offline/audioset_classes.json: the AudioSet ontology's entries for YAMNet's
521 classes (id, names, parent names, description), the class text of the offline backend.

Usage: python scripts/make_ontology_subset.py [ONTOLOGY_JSON] [YAMNET_CLASS_MAP_CSV]
(defaults: ../shared/data/audioset-ontology/ontology.json and the offline model's class map
in the test cache). The output carries the ontology's attribution and licence (CC BY-SA 4.0).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "monitor" / "models" / "offline" / "audioset_classes.json"
NOTICE = (
    "Subset of the AudioSet ontology (github.com/audioset/ontology, ontology.json at commit "
    "d417d32bf59c711abb5910fd2f76a0eb44697991, v1 2017-03-06): id, name, parents and "
    "description of YAMNet's 521 classes. Made available by Google Inc. under the Creative "
    "Commons Attribution-ShareAlike 4.0 International licence (CC BY-SA 4.0, "
    "https://creativecommons.org/licenses/by-sa/4.0/); this file stays under that licence."
)


def main() -> int:
    onto_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/audioset-ontology/ontology.json"
    map_path = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else Path.home() / ".cache/sound-monitor-tests/offline/yamnet_class_map.csv"
    )
    onto = {e["id"]: e for e in json.loads(onto_path.read_text())}
    parents: dict[str, list[str]] = {}
    for e in onto.values():
        for c in e["child_ids"]:
            parents.setdefault(c, []).append(e["id"])
    with open(map_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = []
    for r in rows:
        e = onto[r["mid"]]
        classes.append(
            {
                "id": r["mid"],
                "name": r["display_name"],
                "parents": sorted(onto[p]["name"] for p in parents.get(r["mid"], []) if p in onto),
                "description": e["description"].strip(),
            }
        )
    OUT.write_text(json.dumps({"notice": NOTICE, "classes": classes}, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(classes)} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
