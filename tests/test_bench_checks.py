"""``bench/checks.py`` without arguments scores the demo's caption dataset, named once in conf/."""

import re
from pathlib import Path

from hydra import compose, initialize_config_module

from bench import checks

ROOT = Path(__file__).resolve().parents[1]


def _demo_datasets() -> dict[str, str]:
    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name="demo")
    return {str(name): str(src.get("_target_", "")) for name, src in cfg.datasets.items()}


def test_no_arguments_score_captions_on_the_demo_caption_dataset() -> None:
    """The class-folder dataset has no captions: the default is the LLaVA conversations."""
    targets = _demo_datasets()
    args = checks.parse_args([])
    assert targets[args.caption_dataset] == "plugins.llava.LlavaSource"
    assert targets[args.dataset] == "plugins.image_folder.ImageFolderSource"
    assert args.caption_dataset != args.dataset
    # explicit options still win over the config
    assert checks.parse_args(["--caption-dataset", "other"]).caption_dataset == "other"


def test_dataset_names_live_only_in_the_demo_config() -> None:
    """Neither the bench nor the Makefile spells a demo dataset name a second time."""
    names = set(_demo_datasets())
    source = (ROOT / "bench" / "checks.py").read_text()
    quoted = set(re.findall(r"""["']([A-Za-z_]+)["']""", source))
    assert not names & quoted, names & quoted
    bench_calls = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "checks.py" in ln]
    assert bench_calls, "make demo runs bench/checks.py"
    assert all("--caption-dataset" not in ln and "--dataset" not in ln for ln in bench_calls)


def test_search_queries_paraphrase_the_whole_demo_vocabulary() -> None:
    from lake.demo_data import COLOURS, SHAPES

    assert set(checks.SHAPE_PARAPHRASES) == set(SHAPES)
    assert set(checks.COLOUR_PARAPHRASES) == set(COLOURS)
    queries = checks.search_queries()
    assert {v: len(q) for v, q in queries.items()} == {"literal": 48, "shape": 48, "both": 48}
    assert ("a red circle", "circle", "red") in queries["literal"]
    assert ("a crimson disc", "circle", "red") in queries["both"]
    for text, shape, colour in queries["both"]:  # only "five-pointed star" keeps its noun
        assert colour not in text.split()
        assert shape not in text.split() or shape == "star"
