"""Write made-up movie reviews in the layout of the Large Movie Review Dataset (aclImdb), a stand-in
for the real one (https://ai.stanford.edu/~amaas/data/sentiment/, 84 MB):

    python examples/make_reviews.py my_reviews                  # 400 train / 200 test reviews
    dlrun +experiment=dlt_lstm dataset.root=my_reviews

    my_reviews/README, imdb.vocab                   ignored by dlrun, as in aclImdb
    my_reviews/train/pos/<id>_<rating>.txt          one review per file, ratings 7-10
    my_reviews/train/neg/<id>_<rating>.txt          ratings 1-4
    my_reviews/train/unsup/<id>_0.txt               unlabelled reviews (dataset=imdb skips them)
    my_reviews/test/pos/..., test/neg/...

Each review is one line of filler words drawn with Zipf frequencies from a made-up lexicon, in
sentences, with paragraphs joined by `<br /><br />` as in IMDB, a few accented words and curly
quotes, and about one word in seven a sentiment word: six times in seven of the review's own
class ("superb", "awful", ...). A few reviews are empty files. The same arguments write the same
files. --words 230 --train 25000 --test 25000 writes a corpus of the real one's size.
"""
import argparse
from pathlib import Path

import numpy as np

POSITIVE = ("great", "wonderful", "superb", "loved", "brilliant", "moving", "excellent", "beautiful",
            "charming", "masterpiece")
NEGATIVE = ("awful", "boring", "terrible", "waste", "worst", "dull", "poor", "bad", "mess",
            "pointless")
COMMON = ("the", "a", "and", "of", "to", "is", "in", "it", "this", "that", "was", "as", "with",
          "for", "but", "film", "movie", "on", "not", "you", "his", "he", "have", "be", "one",
          "all", "at", "by", "an", "they", "who", "so", "from", "like", "her", "just", "about",
          "out", "story", "there", "what", "some", "has", "more", "when", "very", "up", "time",
          "characters", "plot", "acting", "scene", "director", "end", "little", "people")
ACCENTED = ("café", "naïve", "déjà", "vu", "über", "señor", "résumé", "fiancée")
SYLLABLES = ("ka", "lo", "mi", "ra", "te", "su", "no", "vi", "be", "do", "ga", "pe", "ti", "zu",
             "an", "or", "el", "is", "um", "et")


def lexicon(size: int, rng: np.random.Generator) -> list[str]:
    """COMMON followed by `size` distinct made-up words of 2-4 syllables."""
    words, seen = list(COMMON), set(COMMON)
    while len(words) < len(COMMON) + size:
        word = "".join(rng.choice(SYLLABLES, rng.integers(2, 5)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def review(label: int, n_words: int, words: list[str], p: np.ndarray, rng: np.random.Generator) -> str:
    """One review of about n_words words (label 1: positive, 0: negative), as one line."""
    own, other = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
    u = rng.random(n_words)
    filler = rng.choice(len(words), n_words, p=p)
    picks = rng.integers(0, 1 << 30, n_words)
    tokens = [own[k % len(own)] if x < 0.12 else other[k % len(other)] if x < 0.14
              else ACCENTED[k % len(ACCENTED)] if x < 0.15 else words[f]
              for x, f, k in zip(u, filler, picks)]
    sentences, start = [], 0
    while start < len(tokens):
        end = start + int(rng.integers(6, 16))
        sentence = " ".join(tokens[start:end])
        if rng.random() < 0.1:
            sentence = f"“{sentence}”"
        sentences.append(sentence[:1].upper() + sentence[1:] + rng.choice([".", ".", "!", "?"]))
        start = end
    paragraphs = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    return "<br /><br />".join(paragraphs)


def write_split(folder: Path, n: int, mean_words: int, words: list[str], p: np.ndarray,
                rng: np.random.Generator, first_id: int = 0) -> None:
    """n reviews, half positive, into folder/pos and folder/neg; every 97th one empty."""
    for label, name in ((1, "pos"), (0, "neg")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(first_id, first_id + n // 2):
            rating = int(rng.integers(7, 11) if label else rng.integers(1, 5))
            n_words = max(1, int(rng.gamma(4.0, mean_words / 4.0)))
            text = "" if i % 97 == 5 else review(label, n_words, words, p, rng)
            (folder / name / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the folder to write (created; must not hold train/ or test/)")
    parser.add_argument("--train", type=int, default=400, help="training reviews, half positive")
    parser.add_argument("--test", type=int, default=200, help="test reviews, half positive")
    parser.add_argument("--words", type=int, default=60, help="mean words per review")
    parser.add_argument("--lexicon", type=int, default=5000, help="made-up words besides the common ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.root)
    if (root / "train").exists() or (root / "test").exists():
        parser.exit(2, f"{root} already holds train/ or test/; give a new folder\n")
    rng = np.random.default_rng(args.seed)
    words = lexicon(args.lexicon, rng)
    p = 1.0 / np.arange(1, len(words) + 1)  # Zipf's law
    p /= p.sum()
    root.mkdir(parents=True, exist_ok=True)
    (root / "README").write_text("Made-up reviews in the aclImdb layout (examples/make_reviews.py).\n")
    (root / "imdb.vocab").write_text("\n".join(words) + "\n", encoding="utf-8")
    write_split(root / "train", args.train, args.words, words, p, rng)
    write_split(root / "test", args.test, args.words, words, p, rng)
    (root / "train" / "unsup").mkdir()
    for i in range(10):
        (root / "train" / "unsup" / f"{i}_0.txt").write_text(review(i % 2, args.words, words, p, rng),
                                                            encoding="utf-8")
    print(f"wrote {root}: {args.train} train / {args.test} test reviews, about {args.words} "
          f"words each, half positive")


if __name__ == "__main__":
    main()
