"""Five complete languages: no untranslated or fuzzy entry, catalogs current with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from stillroom.webapp.i18n import language_name
from stillroom.webapp.settings import LANGUAGES

from support import AuthActions

ROOT = Path(__file__).resolve().parent.parent
TRANSLATED = [lang for lang in LANGUAGES if lang != "en"]


def catalog(path: Path):
    with path.open("rb") as handle:
        return read_po(handle)


def msgids(cat) -> set[str]:
    return {message.id for message in cat if message.id}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> set[str]:
    """Extract the messages from the code as it is now."""
    out = tmp_path_factory.mktemp("pot") / "messages.pot"
    pybabel = Path(sys.executable).with_name("pybabel")
    subprocess.run(
        [
            str(pybabel),
            "extract",
            "-F",
            "pyproject.toml",
            "-k",
            "_l",
            "-o",
            str(out),
            "crypto",
            "webapp",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return msgids(catalog(out))


def test_template_is_current(extracted):
    assert msgids(catalog(ROOT / "locale" / "messages.pot")) == extracted, (
        "run the catalog update described in the README"
    )


@pytest.mark.parametrize("lang", TRANSLATED)
def test_catalog_is_complete_and_current(lang, extracted):
    cat = catalog(ROOT / "locale" / lang / "LC_MESSAGES" / "messages.po")
    assert msgids(cat) == extracted
    untranslated = [m.id for m in cat if m.id and not m.string]
    fuzzy = [m.id for m in cat if m.id and m.fuzzy]
    assert not untranslated, untranslated
    assert not fuzzy, fuzzy
    problems = [(m.id, errors) for m, errors in cat.check()]
    assert not problems, problems


@pytest.mark.parametrize("lang", TRANSLATED)
def test_pages_are_served_translated(client, lang):
    english = client.get("/en/").get_data(as_text=True)
    page = client.get(f"/{lang}/").get_data(as_text=True)
    cat = catalog(ROOT / "locale" / lang / "LC_MESSAGES" / "messages.po")
    assert cat["Help now"].string in page
    assert "How it works" in english and "How it works" not in page


def test_language_names_inside_sentences_are_in_the_pages_language(therapist, app):
    therapist.create()  # Anna offers German and English
    assert therapist.publish("2027-01-18", "18:00").status_code == 302
    german = AuthActions(app.test_client(), lang="de")
    german.create()
    booking = german.client.get("/de/book").get_data(as_text=True)
    [slot] = re.findall(r"name=slot value=([0-9a-f]+)", booking)
    assert german.post("/book", {"slot": slot}).status_code == 302
    english = german.client.get("/en/account").get_data(as_text=True)
    assert "Chat with Anna, in German." in english
    # "Deutsch" stays only where German is offered in itself: the language links.
    assert english.count("Deutsch") == 1 and 'lang="de" hreflang="de">Deutsch<' in english
    assert "němčina" in german.client.get("/cs/account").get_data(as_text=True)
    portal_home = therapist.client.get("/en/").get_data(as_text=True)
    assert "· German" in portal_home and portal_home.count("Deutsch") == 1


def test_portuguese_pages_name_languages_in_european_portuguese(app):
    """Babel's plain "pt" is Brazilian: a Portuguese page says "checo", never "tcheco"."""
    with app.test_request_context("/pt/"):
        assert language_name("cs") == "checo"
