from edgebox.runtimes.text import StopMatcher, TokenTextDecoder


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + ("" if matcher.stopped else matcher.flush())


def test_stop_string_split_across_pieces_is_cut_and_never_leaked() -> None:
    matcher = StopMatcher(["END"])
    released = [matcher.feed(p) for p in ["hello E", "N", "D world"]]
    assert released == ["hello ", "", ""]
    assert matcher.stopped


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("an E") == "an "
    assert matcher.feed("ND") == ""  # "END" completed
    assert matcher.stopped
    other = StopMatcher(["END"])
    assert feed_all(other, ["an E", "lephant"]) == "an Elephant"


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["world", "lo w"]), ["hello world"]) == "hel"


def test_no_stops_passes_text_through() -> None:
    assert feed_all(StopMatcher([]), ["a", "b"]) == "ab"


def test_decoder_joins_multibyte_characters_split_across_tokens() -> None:
    decoder = TokenTextDecoder()
    snowman = "☃".encode()
    assert decoder.feed(snowman[:1]) == ""
    assert decoder.feed(snowman[1:]) == "☃"
    assert decoder.feed(b"\xe2") == ""
    assert decoder.flush() == "\ufffd"  # an unfinished character at the end is replaced
