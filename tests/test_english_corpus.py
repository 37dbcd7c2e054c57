"""english_corpus and glossary_corpus: real English from Debian's python3-doc and wordnet-base
(installed by setup.sh --test)."""
import pytest

import llmri
from llmri.corpus import _rst_paragraphs

RST = """\
.. _tut-x:

*****************
A Heading Here
*****************

Perhaps the most well-known statement type is the :keyword:`if` statement, and
``x`` is a name; see :ref:`the tutorial <tut-if>` for **more** details today.

   >>> x = int(input("Please enter an integer: "))
   code that is indented and never prose at all, even if it is long enough

.. note::
   A directive body is skipped too, however many words it happens to have in it.

Too short to count.
"""


def test_rst_paragraphs_hand_worked():
    assert _rst_paragraphs(RST) == [
        "Perhaps the most well-known statement type is the if statement, and x is a name; "
        "see the tutorial for more details today."]


def test_english_corpus_is_large_real_and_seeded():
    c = llmri.english_corpus()
    assert set(c.label_names) == set(llmri.corpus.ENGLISH_SECTIONS)
    words = sum(len(t.split()) for t in c.texts)
    assert words > 250_000                          # enough for a >= 200k-token SAE run
    assert not any(">>>" in t[:3] or "``" in t or ":func:`" in t for t in c.texts)
    a = llmri.english_corpus(("tutorial", "faq"), max_docs=50, seed=3)
    b = llmri.english_corpus(("tutorial", "faq"), max_docs=50, seed=3)
    assert a.texts == b.texts and len(a) == 50 and set(a.label_names) == {"tutorial", "faq"}
    assert set(a.texts) <= set(llmri.english_corpus(("tutorial", "faq")).texts)


def test_english_corpus_bad_section():
    with pytest.raises(llmri.LlmriError, match="unknown section.*nope"):
        llmri.english_corpus(("nope",))


# Two lines in WordNet's data.noun format (wndb(5)), fields worked by hand: lexicographer file 15
# is noun.location, 0c words (hex) would be 12; here 04 and 01 words.
WN_PARIS = ("08932568 15 n 04 Paris 0 City_of_Light 0 French_capital 0 capital_of_France 0 001 "
            "@i 08691669 n 0000 | the capital and largest city of France; and international center "
            "of culture and commerce  \n")
WN_FRENCH = "06960778 10 n 01 French 0 001 @ 06960298 n 0000 | the Romance language spoken in France  \n"


def test_wordnet_entry_hand_worked():
    from llmri.corpus import _wordnet_entry
    assert _wordnet_entry(WN_PARIS) == (
        "location", "Paris (City of Light, French capital): the capital and largest city of France; and "
        "international center of culture and commerce.")
    assert _wordnet_entry(WN_FRENCH) == ("communication", "French: the Romance language spoken in France.")
    assert _wordnet_entry("  1 This software and database is being provided to you, the LICENSEE\n") is None


def test_glossary_corpus_is_wordnet_and_seeded():
    c = llmri.glossary_corpus(("location", "communication"))
    assert set(c.label_names) == {"location", "communication"}
    # the synset counts of WordNet 3.0's two lexicographer files (lexnames(5)), counted by
    # the file's second field: 3,209 noun.location and 5,607 noun.communication synsets
    assert len(c) == 3209 + 5607
    loc = [t for t, lab in zip(c.texts, c.labels) if c.label_names[lab] == "location"]
    assert any(t.startswith("Paris (City of Light") and "capital and largest city of France" in t for t in loc)
    a = llmri.glossary_corpus(("location",), max_docs=40, seed=2)
    assert a.texts == llmri.glossary_corpus(("location",), max_docs=40, seed=2).texts and len(a) == 40
    assert set(a.texts) <= set(loc)


def test_glossary_corpus_bad_topic():
    with pytest.raises(llmri.LlmriError, match="unknown topic.*'places'"):
        llmri.glossary_corpus(("places",))
