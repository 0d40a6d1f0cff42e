"""Text classification (dataset=imdb, text_folder; model=lstm on token ids; +experiment=dlt_lstm):
the aclImdb layout and folders of text files read into padded token ids with a vocabulary built
on train/, every refusal in one line, padding that changes nothing, and a short training on made
reviews that beats chance clearly, then evaluated, predicted and exported from its directory."""
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _config import compose
from conftest import run_dirs
from dlrun.data import text
from dlrun.data.arrays import DataInfo
from dlrun.errors import ConfigError, DataError, FileError
from dlrun.models.recurrent import lstm
from dlrun.runs import layout
from dlrun.train import build_setup

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = text.TextSettings(vocab_size=10000, maxlen=6, long="truncate", lowercase=True,
                             first_line=True, val_fraction=0.0)


def write_files(root: Path, files: dict[str, str]) -> Path:
    """root/<relative path> = text, for each entry."""
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content, encoding="utf-8")
    return root


def small_imdb(root: Path) -> Path:
    """Four training and two test reviews in the aclImdb layout, with its other files."""
    return write_files(root, {
        "README": "not a review", "imdb.vocab": "good\nbad\n",
        "train/pos/0_9.txt": "Good good great FILM!\nsecond line, never read",
        "train/pos/1_8.txt": "good film",
        "train/neg/0_2.txt": "bad film",
        "train/neg/1_1.txt": "Bad bad<br /><br />awful",
        "train/unsup/0_0.txt": "zzz zzz zzz zzz",  # unlabelled: never read
        "train/urls_pos.txt": "http://example.com",
        "test/pos/0_10.txt": "good unseen",
        "test/neg/0_3.txt": "",  # an empty review
    })


def made_reviews(root: Path, *args: str) -> Path:
    """examples/make_reviews.py's made-up aclImdb corpus (words that predict the label,
    `<br />`, accents, curly quotes, empty files, train/unsup)."""
    spec = importlib.util.spec_from_file_location("make_reviews", ROOT / "examples" / "make_reviews.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(root), *args])
    return root


def read(root: Path, settings=SETTINGS, classes=text.IMDB_CLASSES, cache=None):
    return text.read_text_folder(str(root), classes, settings, cache or root.parent / "cache")


# ---- tokens, vocabulary, encoding ---------------------------------------------------------------
def test_tokenize_splits_words_numbers_and_punctuation():
    assert text.tokenize("Great film!<br /><br />I didn't LIKE the café—2 stars.") == [
        "great", "film", "!", "i", "didn't", "like", "the", "café", "—", "2", "stars", "."]
    assert text.tokenize("Über “quoted”", lowercase=False) == ["Über", "“", "quoted", "”"]


def test_vocabulary_order_size_unknown_words_and_padding(tmp_path):
    settings = text.TextSettings(5, 4, "truncate", True, True, 0.0)
    arrays, vocab = read(small_imdb(tmp_path / "imdb"), settings)
    # counts on train/ (first lines): bad 3, film 3, good 3, !/awful/great 1; ties alphabetically
    assert vocab["words"] == ["bad", "film", "good"] and vocab["counts"] == [3, 3, 3]
    assert (vocab["pad"], vocab["unk"], vocab["first_id"], vocab["maxlen"]) == (0, 1, 2, 4)
    assert arrays.vocab_size == 5 and arrays.class_names == ("neg", "pos")
    rows = {tuple(x): int(y) for x, y in zip(arrays.x_train, arrays.y_train)}
    assert rows == {(4, 4, 1, 3): 1,   # good good great film (! cut at maxlen 4; great unknown)
                    (4, 3, 0, 0): 1,   # good film, padded
                    (2, 3, 0, 0): 0,   # bad film
                    (2, 2, 1, 0): 0}   # bad bad <br /> awful
    assert arrays.x_train.dtype == np.int32 and arrays.x_train.shape == (4, 4)
    np.testing.assert_array_equal(arrays.x_test, [[0, 0, 0, 0], [4, 1, 0, 0]])  # neg first
    np.testing.assert_array_equal(arrays.y_test, [0, 1])
    info = arrays.info()
    assert (info.kind, info.vocab_size, info.image_shape, info.counts) == ("tokens", 5, (4,), (4, 0, 2))


def test_first_line_the_whole_file_and_the_text_folder_layout(tmp_path):
    root = write_files(tmp_path / "texts", {
        "train/a/1": "alpha\nbeta", "train/b/1": "gamma", "train/c/1": "delta", "train/c/.hidden": "x",
        "val/a/1": "alpha", "test/a/1": "beta", "test/b/1": "gamma"})
    whole = text.TextSettings(100, 3, "truncate", True, False, 0.0)
    arrays, vocab = read(root, whole, classes=None)
    assert arrays.class_names == ("a", "b", "c") and len(arrays.x_val) == 1
    assert sorted(vocab["words"]) == ["alpha", "beta", "delta", "gamma"]  # beta: line 2 of a/1
    first = text.TextSettings(100, 3, "truncate", True, True, 0.0)
    assert "beta" not in read(root, first, classes=None)[1]["words"]


def test_long_training_texts_are_dropped_or_truncated_and_held_out_ones_truncated(tmp_path):
    root = write_files(tmp_path / "imdb", {
        "train/pos/0_9.txt": "a b c d", "train/pos/1_9.txt": "a b", "train/neg/0_1.txt": "c d e",
        "train/neg/1_1.txt": "e", "test/pos/0_9.txt": "a b c d e", "test/neg/0_1.txt": "e"})
    drop = text.TextSettings(100, 3, "drop", True, True, 0.0)
    arrays, _ = read(root, drop)
    assert len(arrays.x_train) == 2 and (arrays.x_train != 0).sum(1).max() <= 2  # len >= 3 out
    assert arrays.x_test.shape == (2, 3) and (arrays.x_test[1] != 0).all()  # cut to 3
    truncate = text.TextSettings(100, 3, "truncate", True, True, 0.0)
    assert len(read(root, truncate)[0].x_train) == 4


def test_val_fraction_holds_out_a_shuffled_mix_of_the_training_texts(tmp_path):
    root = made_reviews(tmp_path / "reviews", "--train", "200", "--test", "20", "--words", "10")
    settings = text.TextSettings(1000, 20, "truncate", True, True, 0.05)
    arrays, _ = read(root, settings)
    assert (len(arrays.x_train), len(arrays.x_val)) == (190, 10)  # DLT: round(200 * 0.95)
    assert set(arrays.y_val.tolist()) == {0, 1}


def test_the_cache_is_read_once_and_a_changed_file_reads_again(tmp_path, monkeypatch):
    root = small_imdb(tmp_path / "imdb")
    first, vocab = read(root)
    monkeypatch.setattr(text, "read_corpus", lambda *a: pytest.fail("read again"))
    again, vocab_again = read(root)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert vocab == vocab_again
    monkeypatch.undo()
    (root / "train" / "neg" / "0_2.txt").write_text("bad bad bad film film")
    assert read(root)[1]["counts"][:2] == [5, 4]  # bad, film


def test_a_run_keeps_its_vocabulary_and_a_changed_one_is_refused(tmp_path):
    _, vocab = read(small_imdb(tmp_path / "imdb"))
    text.save_vocabulary(tmp_path, vocab)
    assert json.loads((tmp_path / layout.VOCAB).read_text(encoding="utf-8")) == vocab
    text.check_vocabulary(tmp_path, vocab, "evaluating it")  # the same: accepted
    with pytest.raises(FileError, match="another vocabulary.*resuming it needs") as e:
        text.check_vocabulary(tmp_path, {**vocab, "words": ["film"]}, "resuming it")
    assert "\n" not in str(e.value)
    ids = text.encode_text("Good FILM, unseen words\nnot this line", vocab)
    assert ids[:5].tolist() == [4, 3, 1, 1, 1] and len(ids) == vocab["maxlen"]


def test_data_info_of_old_runs_is_of_images():
    old = {"image_shape": [28, 28, 1], "num_classes": 10, "counts": [3, 0, 1]}
    assert DataInfo.from_dict(old).kind == "image" and DataInfo.from_dict(old).vocab_size == 0
    tokens = DataInfo((100,), 2, (10, 1, 5), ("neg", "pos"), kind="tokens", vocab_size=50)
    assert DataInfo.from_dict(tokens.as_dict()) == tokens and tokens.example_bytes() == 400


# ---- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("files, classes, words", [
    (None, text.IMDB_CLASSES, ["is not a directory"]),
    ({"test/pos/0_1.txt": "a"}, text.IMDB_CLASSES, ["has no train/ folder"]),
    ({"train/pos/0_1.txt": "a", "test/pos/0_1.txt": "a"}, text.IMDB_CLASSES,
     ["has no neg/ folder", "text_folder"]),
    ({"train/pos/README": "a", "train/neg/README": "a", "test/pos/0.txt": "a", "test/neg/0.txt": "a"},
     text.IMDB_CLASSES, ["train/neg holds no text files"]),
    ({"train/notes.txt": "a", "test/a/1": "b"}, None, ["train holds no class folders with text files"]),
    ({"train/a/1": "a", "test/a/1": "b"}, None, ["one class folder (a)", "at least two"]),
    ({"train/a/1": "a", "train/b/1": "b", "test/c/1": "c"}, None, ["class folder(s) c", "train lacks"]),
])
def test_layout_refusals_are_one_line(tmp_path, files, classes, words):
    root = tmp_path / "data"
    if files is not None:
        write_files(root, files)
    with pytest.raises(DataError) as e:
        read(root, classes=classes)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_settings_that_leave_no_data_are_refused(tmp_path):
    root = write_files(tmp_path / "imdb", {"train/pos/0.txt": "a b c", "train/neg/0.txt": "a b c d",
                                           "test/pos/0.txt": "a", "test/neg/0.txt": "b", "val/pos/0.txt": "a",
                                           "val/neg/0.txt": "b"})
    with pytest.raises(DataError, match="every text has 3 tokens or more.*dataset.long=truncate"):
        read(root, text.TextSettings(100, 3, "drop", True, True, 0.0))
    with pytest.raises(DataError, match="has a val/ folder and dataset.val_fraction"):
        read(root, text.TextSettings(100, 3, "truncate", True, True, 0.5))


@pytest.mark.parametrize("overrides, words", [
    (["dataset.vocab_size=2"], "dataset.vocab_size must be > 2"),
    (["dataset.maxlen=0"], "dataset.maxlen must be >= 1"),
    (["dataset.long=cut"], "dataset.long must be one of truncate, drop"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction must be in [0, 1)"),
    (["dataset.val_fraction=0.05", "dataset.val_size=10"], "val_fraction and val_size both"),
    (["dataset.preprocess=standardize"], "preprocess and augment transform images"),
    (["dataset.augment=[flip]"], "take neither"),
    (["model=mlp"], "holds token ids (texts); model=mlp reads images: use model=lstm"),
    (["train.tta=flip"], "train.tta flips and shifts images"),
])
def test_config_refusals_are_one_line(tmp_path, overrides, words):
    root = small_imdb(tmp_path / "imdb")
    cfg = compose("+experiment=dlt_lstm", f"dataset.root={root}", "train.batch_size=2",
                  "dataset.val_fraction=0", *overrides)
    with pytest.raises(ConfigError) as e:
        build_setup(cfg)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


def test_the_root_is_required():
    with pytest.raises(ConfigError, match="dataset.root is required: dataset=imdb dataset.root=DIR"):
        build_setup(compose("dataset=imdb", "model=lstm"))


# ---- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_padding_leaves_the_logits_unchanged(pool):
    model = lstm(hidden=16, embed=8, pool=pool, num_classes=3, dropout={}, vocab_size=40)
    x = jnp.array([[5, 7, 9, 2, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)  # the last: empty
    variables = model.init(jax.random.key(0), x)
    logits = model.apply(variables, x)
    for other in (jnp.pad(x, ((0, 0), (0, 11))), x[:, :4], x.astype(jnp.float32)):
        np.testing.assert_allclose(model.apply(variables, other), logits, rtol=0, atol=1e-6)
    assert not np.allclose(logits[0], logits[1])  # the tokens do matter
    assert variables["params"]["embed"]["embedding"].shape == (40, 8)


def test_images_keep_the_rows_lstm():
    setup = build_setup(compose("model=lstm", "model.hidden=8"))
    from dlrun.train import init_state
    params = init_state(setup, jax.random.key(0)).params
    assert set(params) == {"lstm", "out"} and params["lstm"]["ii"]["kernel"].shape == (28, 8)


# ---- training -------------------------------------------------------------------------------------
def test_dlt_lstm_learns_made_reviews_and_its_run_is_evaluated_predicted_exported(tmp_path):
    """The preset, smaller (32 units, 40 tokens) and with Adam (Adadelta needs ~400 steps to
    leave chance here: 10 s more), beats chance clearly in 3 epochs on 600 made reviews (test
    error 0.105-0.135 over seeds 0-3; counting the sentiment words gets 0.02); its
    directory holds vocab.json, and dlrun-eval, -predict and -export read it."""
    from dlrun import train
    from dlrun.cli import eval as dlrun_eval
    from dlrun.cli.export import export_model
    from dlrun.cli.inference import Model, load_run
    from dlrun.cli.predict import classify
    root = made_reviews(tmp_path / "reviews", "--train", "600", "--test", "200", "--words", "40",
                        "--lexicon", "300")
    run_dir = tmp_path / "run"
    summary = train.train_and_evaluate(compose(
        "+experiment=dlt_lstm", f"dataset.root={root}", "dataset.maxlen=40", "dataset.long=truncate",
        "dataset.val_fraction=0.2", "model.hidden=32", "model.embed=32", "optim=adam", "optim.lr=0.01",
        "train.epochs=3",
        "plots=true"), str(run_dir))
    assert summary["final"]["test_error"] < 0.25, summary["final"]  # chance: 0.5
    assert summary["data"]["kind"] == "tokens" and summary["data"]["image_shape"] == [40]
    files = {p.name for p in run_dir.iterdir()}
    assert {"vocab.json", "params.pkl", "learning_curves.png", "confusion_matrix.csv"} <= files
    assert not {"test_images.png", "filters.png"} & files  # no image pictures for texts
    vocab = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["words"][:1] == ["the"] and vocab["maxlen"] == 40

    model = Model(load_run(run_dir))
    metrics, matrix, n = dlrun_eval.evaluate(model, "imdb", "test")
    assert n == 200 and matrix.sum() == 200
    assert metrics["error"] == pytest.approx(summary["final"]["test_error"], abs=1e-6)
    _, names, probs = classify(str(run_dir), [str(root / "test" / "pos")])
    assert len(names) == 100 and probs.shape == (100, 2) and (probs.argmax(1) == 1).mean() > 0.7
    exported = export_model(model)
    ids = text.encode_text("A superb, wonderful film.", vocab)[None]  # (1, 40) int32
    np.testing.assert_allclose(exported.call(ids), model.probabilities(ids), atol=1e-5)


# ---- the command line -------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_preset_from_the_command_line(dlrun, tmp_path):
    root = made_reviews(tmp_path / "reviews", "--train", "200", "--test", "100", "--words", "20")
    proc = dlrun("+experiment=dlt_lstm", f"dataset.root={root}", "train.epochs=2", "model.hidden=16",
                 "model.embed=16", "hydra.run.dir=run", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    assert run_dirs(proc.stdout) == [run.resolve()], proc.stdout
    for name in ("vocab.json", "run.json", "params.pkl", "best_params.pkl", "summary.json",
                 "metrics.jsonl", "learning_curves.png", "confusion_matrix.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "summary.json").read_text())["data"]["kind"] == "tokens"
    refused = dlrun("model=mlp", "dataset=imdb", f"dataset.root={root}")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "use model=lstm" in lines[0], refused.stderr

    # a run whose texts changed is not resumed: its ids would mean other words
    (root / "train" / "pos" / "9999_9.txt").write_text("zebra " * 30)
    refused = dlrun("resume=run", "train.epochs=3")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "another vocabulary than the run's" in lines[0] and "resuming it" in lines[0], lines[0]
