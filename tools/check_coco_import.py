"""Check a COCO export with the importers of CVAT and Label Studio themselves.

    python -m venv /tmp/coco-check && /tmp/coco-check/bin/pip install label-studio-sdk datumaro
    /tmp/coco-check/bin/python tools/check_coco_import.py EXPORT_DIR

EXPORT_DIR is the output of `flask export EXPORT_DIR --format coco`. The two libraries are not
dependencies of the project (they are large); this script is how their reading of our file
was checked (README, "The dataset export"):

- CVAT imports COCO through Datumaro (`coco_instances`, the layout of its "COCO 1.0" zip:
  annotations/instances_default.json beside images/): every annotation must come back as a
  `plate` box with the same bbox and its `text` and `source` attributes.
- Label Studio's converter (`label-studio-converter import coco`, label_studio_sdk.converter)
  turns the file into tasks with pre-annotations (predictions): every annotation must come
  back as a `plate` rectangle at the same place, in percent of the image.

Exits non-zero, naming the first difference, when either reads something else.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path


def check_cvat(export: Path, coco: dict) -> int:
    import datumaro as dm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "annotations").mkdir()
        shutil.copy(export / "annotations.json", root / "annotations" / "instances_default.json")
        shutil.copytree(export / "images", root / "images")
        ds = dm.Dataset.import_from(str(root), "coco_instances")
        labels = ds.categories()[dm.AnnotationType.label]
        got = {}
        for item in ds:
            for a in item.annotations:
                got.setdefault(Path(item.id).name, []).append(
                    (labels[a.label].name, [round(v) for v in a.get_bbox()], a.attributes.get("text"), a.attributes.get("source")))
    names = {i["id"]: Path(i["file_name"]).stem for i in coco["images"]}
    for a in coco["annotations"]:
        want = ("plate", a["bbox"], a["attributes"]["text"], a["attributes"]["source"])
        if want not in got.get(names[a["image_id"]], []):
            sys.exit(f"CVAT (Datumaro) read {got.get(names[a['image_id']])} for {want}")
    return sum(len(v) for v in got.values())


def check_label_studio(export: Path, coco: dict) -> int:
    from label_studio_sdk.converter.imports.coco import convert_coco_to_ls

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tasks.json"
        convert_coco_to_ls(str(export / "annotations.json"), str(out), out_type="predictions")
        tasks = json.loads(out.read_text())
    got = {}
    for t in tasks:
        name = Path(t["data"]["image"]).stem
        for r in (r for p in t.get("predictions", []) for r in p["result"]):
            v = r["value"]
            got.setdefault(name, []).append((v["rectanglelabels"], round(v["x"], 3), round(v["y"], 3),
                                             round(v["width"], 3), round(v["height"], 3)))
    images = {i["id"]: i for i in coco["images"]}
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        W, H = im["width"], im["height"]
        want = (["plate"], round(100 * x / W, 3), round(100 * y / H, 3), round(100 * w / W, 3), round(100 * h / H, 3))
        if want not in got.get(Path(im["file_name"]).stem, []):
            sys.exit(f"Label Studio read {got.get(Path(im['file_name']).stem)} for {want}")
    return sum(len(v) for v in got.values())


def main() -> None:
    export = Path(sys.argv[1])
    coco = json.loads((export / "annotations.json").read_text())
    if not coco["annotations"]:
        sys.exit("the export has no plate annotations to check")
    n_cvat = check_cvat(export, coco)
    n_ls = check_label_studio(export, coco)
    print(f"{len(coco['annotations'])} plate annotations on {len(coco['images'])} images: "
          f"CVAT's importer (Datumaro coco_instances) read {n_cvat}, Label Studio's converter {n_ls} pre-annotations; all match")


if __name__ == "__main__":
    main()
