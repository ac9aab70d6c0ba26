"""Writes a features directory whose views are raw texts, from a dataset folder that
keeps its texts as records: `<split>/texts.jsonl` (one JSON object per line) becomes one
`<split>/<field>.jsonl` per chosen field (one JSON string per line), and `label.npy` is
copied beside them. For the WordNet views:

    python scripts/text_views.py ../shared/data/wordnet-adj-adv-minilm OUT --fields gloss,lemmas,example

Each file is written whole and then renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil


def write_text_views(source: str, out: str, fields: list[str]) -> None:
    splits = sorted(name for name in os.listdir(source) if os.path.isfile(os.path.join(source, name, "texts.jsonl")))
    if not splits:
        raise SystemExit(f"{source} has no <split>/texts.jsonl")
    for split in splits:
        with open(os.path.join(source, split, "texts.jsonl"), encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for field in fields:
            missing = next((i for i, record in enumerate(records) if not isinstance(record.get(field), str)), None)
            if missing is not None:
                raise SystemExit(f"{source}/{split}/texts.jsonl line {missing + 1} has no text field {field!r}")
            final = os.path.join(out, split, f"{field}.jsonl")
            with open(final + ".partial", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record[field]) + "\n" for record in records)
            os.replace(final + ".partial", final)
        labels = os.path.join(source, split, "label.npy")
        if os.path.isfile(labels):
            shutil.copyfile(labels, os.path.join(out, split, "label.npy.partial"))
            os.replace(os.path.join(out, split, "label.npy.partial"), os.path.join(out, split, "label.npy"))
        print(f"{split}: {len(records)} instances, views {fields}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--fields", required=True, help="comma-separated text fields, e.g. gloss,lemmas,example")
    args = parser.parse_args(argv)
    write_text_views(args.source, args.out, [f for f in args.fields.split(",") if f])


if __name__ == "__main__":
    main()
