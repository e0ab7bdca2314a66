"""The trainer's data split: validation and calibration requests never reach training, in any form."""
import json

import numpy as np
import pytest

from needle_core.callformat import load_tokenizer
from training.data import split_by_request
from training.features import FeatureSet, featurize_all
from training.train import heldout_path, prepare_features, split_features

WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}},
                          "required": ["city"]}}
CITIES = ["Paris", "Lyon", "Rome", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Dakar", "Perth",
          "Turin", "Porto", "Ghent", "Basel", "Graz", "Split", "Bergen", "Malmo", "Cork", "Bath"]


def example(i, city, source="s"):
    return {"messages": [{"role": "user", "content": f"What is the weather in {city}?"}], "tools": [WEATHER],
            "calls": [{"name": "get_weather", "arguments": {"city": city}}], "source": source, "teacher": "t",
            "id": f"{source}/{i}"}


def test_split_by_request_keeps_one_request_on_one_side():
    examples = [example(i, c) for i, c in enumerate(CITIES)] + [example(i, c, "other") for i, c in enumerate(CITIES)]
    rest, held = split_by_request(examples, 0.3, salt="x")
    assert held and rest and len(held) + len(rest) == len(examples)
    held_words = {json.dumps(e["messages"]) for e in held}
    assert not held_words & {json.dumps(e["messages"]) for e in rest}
    assert split_by_request(examples, 0.3, salt="x") == (rest, held)  # deterministic
    assert split_by_request(examples, 0.3, salt="y") != (rest, held)  # salts give other splits


def test_prepare_features_marks_heldout_requests(tmp_path):
    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps(example(i, c)) + "\n" for i, c in enumerate(CITIES)))
    out = tmp_path / "features.npz"
    stats = prepare_features([str(data)], str(out), augment_factor=2, val_fraction=0.25)
    held = [json.loads(line) for line in heldout_path(str(out)).read_text().splitlines()]
    assert 0 < len(held) < len(CITIES)
    features = FeatureSet.load(str(out))
    val, train = split_features(features, 0.25)
    assert len(val) + len(train) == len(features) == stats["kept"] + stats["held out: kept"]
    # no held-out city appears in any training input, augmented or not
    held_cities = {e["calls"][0]["arguments"]["city"] for e in held}
    held_rows = featurize_all(held, progress=False)[0]
    held_ids = {tuple(FeatureSet(held_rows).row(i)["ids"]) for i in range(len(held))}
    assert held_ids <= {tuple(val.row(i)["ids"]) for i in range(len(val))}
    tok = load_tokenizer()
    train_words = {w for i in range(len(train)) for w in tok.decode(train.row(i)["ids"].tolist()).split()}
    assert not {c.lower() for c in held_cities} & train_words


def test_needle_train_prepare_only_writes_features_and_trains_nothing(tmp_path):
    """`needle train --prepare ... --prepare-only` (features made on a CPU, trained on a GPU machine):
    the features and held-out requests are written, augmented with the seed given, and no run starts."""
    from needle_core.cli import main

    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps(example(i, c)) + "\n" for i, c in enumerate(CITIES)))
    config = tmp_path / "cfg.toml"
    config.write_text(f'features = "{tmp_path / "f.npz"}"\nout_dir = "{tmp_path / "run"}"\nval_fraction = 0.25\n')
    assert main(["train", "--config", str(config), "--prepare", str(data), "--augment", "1", "--seed", "3",
                 "--prepare-only"]) == 0
    assert len(FeatureSet.load(str(tmp_path / "f.npz"))) > len(CITIES)  # augmented copies
    assert heldout_path(str(tmp_path / "f.npz")).exists() and not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="--prepare-only needs --prepare"):
        main(["train", "--config", str(config), "--prepare-only"])


def test_features_without_a_split_warn_and_split_by_row():
    rows, _ = featurize_all([example(i, c) for i, c in enumerate(CITIES)], progress=False)
    with pytest.warns(UserWarning, match="no held-out split"):
        val, train = split_features(FeatureSet(rows), 0.1)
    assert len(val) == 2 and len(train) == len(CITIES) - 2
    assert "is_val" not in rows and np.all(FeatureSet(rows).lengths() > 0)


def test_featurize_on_worker_processes_gives_the_rows_and_counts_of_one_process(monkeypatch):
    """Chunks featurized on two spawned processes come back in input order, with the skip counts merged."""
    import training.features as features

    examples = [example(i, c) for i, c in enumerate(CITIES)]
    examples[5]["calls"][0]["arguments"]["city"] = "Atlantis"  # unusable: counted, not kept
    monkeypatch.setattr(features, "FEATURIZE_CHUNK", 3)
    one, one_stats = featurize_all(examples, progress=False, workers=1)
    two, two_stats = featurize_all(examples, progress=False, workers=2)
    assert one_stats == two_stats and one_stats["kept"] == len(CITIES) - 1
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)


def test_unusable_examples_are_counted_by_reason_not_by_name():
    invented = [example(i, c) for i, c in enumerate(CITIES[:3])]
    for ex in invented:  # the teacher answered with a city the request never names
        ex["calls"][0]["arguments"]["city"] = "Atlantis"
    rows, stats = featurize_all(invented, progress=False)
    assert len(rows["ids_off"]) == 1 and stats == {"skipped: required argument … cannot be formed from the input": 3}


def test_unsure_steps_are_fed_to_the_decoder_but_not_learned_from():
    from training.train import collate

    unit = {"type": "string", "enum": ["celsius", "fahrenheit"]}
    ex = example(0, "Paris")
    ex["tools"] = [{**WEATHER, "parameters": {**WEATHER["parameters"], "properties": {
        **WEATHER["parameters"]["properties"], "unit": unit}}}]
    ex["calls"][0]["arguments"]["unit"] = "kelvin"  # not an option: left out, the end stands in its place
    rows, stats = featurize_all([ex], progress=False)
    row = FeatureSet(rows).row(0)
    assert stats["untrained steps (a left-out argument)"] == 1 and row["trained"].tolist().count(0) == 1
    batch = collate([row])
    step = int(np.flatnonzero(row["trained"] == 0)[0])
    assert batch["labels"][0, step] == -100
    assert (batch["labels"][0] != -100).sum() == len(row["actions"]) - 1
    assert batch["prev_actions"][0, step + 1] == collate([{**row, "trained": row["trained"] * 0 + 1}])["prev_actions"][0, step + 1]


def test_concat_of_packed_features_equals_packing_all_rows():
    from training.features import concat, pack

    rng = np.random.default_rng(0)

    def rows(n):
        return [{k: rng.integers(0, 50, rng.integers(1, 6)).astype(np.int16)
                 for k in ("ids", "pos_type", "actions", "kinds")} for _ in range(n)]

    first, second = rows(5), rows(3)
    joined, whole = concat([pack(first), pack(second)]), pack(first + second)
    assert joined.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(joined[key], whole[key])


def test_train_continues_a_model_folder_and_saves_a_resumable_checkpoint(tmp_path):
    """`train` end to end on a tiny model: ``init_from`` an exported model folder (rebuilt from its
    graphs), a few bf16 steps, validation, a checkpoint with its state and a loss curve; run again
    (after a crash, say), it resumes at the saved step rather than starting over from ``init_from``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from transformers import BertConfig

    from needle_core.modeling_needle import NeedleConfig, NeedleForToolCalling
    from training.export import export_onnx
    from training.train import TrainConfig, train

    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps(example(i, c)) + "\n" for i, c in enumerate(CITIES)))
    features = tmp_path / "features.npz"
    prepare_features([str(data)], str(features), val_fraction=0.25)
    encoder = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512).to_dict()
    torch.manual_seed(0)
    NeedleForToolCalling(NeedleConfig(encoder=encoder, decoder_layers=1, decoder_heads=2, decoder_ffn=64)
                         ).save_pretrained(str(tmp_path / "tiny"))
    folder = export_onnx(str(tmp_path / "tiny"), str(tmp_path / "tiny_onnx"))
    cfg = TrainConfig(features=str(features), out_dir=str(tmp_path / "run"), init_from=str(folder), batch_size=4,
                      max_steps=3, warmup_steps=1, eval_every=3, save_every=3, max_minutes=5, num_threads=1)
    checkpoint = train(cfg)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 3 and 3 <= state["examples"] <= 12  # batches of up to 4 rows
    assert any("val_loss" in h for h in state["history"])
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0
    resumed = TrainConfig(**{**cfg.__dict__, "max_steps": 4})
    assert json.loads((train(resumed) / "trainer_state.json").read_text())["step"] == 4
