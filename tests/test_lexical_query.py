from mose_lsp.lexical import fts_query


def test_stop_words_are_left_out_of_the_match_when_other_words_remain():
    assert fts_query(["render", "a", "table", "in", "the", "terminal"]) == (
        '"render" OR "table" OR "terminal"')
    # A query of function words only keeps them (better than matching nothing).
    assert fts_query(["how", "to", "the"]) == '"how" OR "to" OR "the"'
    assert fts_query([]) == ""
