"""ARAD's ratio–size buckets (Table 5), their scaling to a model, and Algorithm 1's assignment.

Shared by the ARAD trainer (which bucket an image trains in) and the `asd` method (stage I size).
"""

import pytest

from anysize.buckets import PAPER_BUCKETS, Bucket, nearest_bucket, parse_buckets, scaled_buckets
from anysize.errors import AnysizeError, InvalidArgumentError

PAPER_SIZES = [(512, 512), (576, 768), (768, 576), (576, 1024), (1024, 576), (640, 1024), (1024, 640), (512, 1024),
               (1024, 512)]


def test_table5_is_the_papers():
    assert [(b.height, b.width) for b in PAPER_BUCKETS] == PAPER_SIZES
    printed = [1.0, 0.75, 1.333, 0.5625, 1.7778, 0.625, 1.6, 0.5, 2.0]  # Table 5's ratio column
    assert all(abs(b.ratio - r) < 5e-4 for b, r in zip(PAPER_BUCKETS, printed))



# Table 5 order: 0 1:1, 1 .75, 2 1.333, 3 .5625, 4 1.778, 5 .625, 6 1.6, 7 .5, 8 2.0
ALGORITHM_1 = [
    (1.0, 0), (0.75, 1), (0.7, 1), (0.6, 5), (0.55, 3), (0.51, 7), (0.1, 7), (1.2, 2), (1.65, 6),
    (1.7, 4), (1.9, 8), (10.0, 8),
    # exact ties on the linear H/W scale go to the later bucket of the table (`distance <= minValue`)
    (0.875, 1),      # 1:1 (0) vs 3:4 (1)
    (0.59375, 5),    # 9:16 (3) vs 5:8 (5)
    (0.53125, 7),    # 9:16 (3) vs 1:2 (7)
]


@pytest.mark.parametrize("ratio,expected", ALGORITHM_1)
def test_nearest_bucket_is_algorithm_1(ratio, expected):
    assert nearest_bucket(ratio * 1000, 1000, PAPER_BUCKETS) == expected


def test_log_rule_is_symmetric_where_the_paper_rule_is_not():
    # r = 0.4 and r = 2.5 are mirror images; on the linear scale 2.5 is 5x further from its end bucket
    assert nearest_bucket(400, 1000, PAPER_BUCKETS, "log") == 7
    assert nearest_bucket(2500, 1000, PAPER_BUCKETS, "log") == 8
    # between 1:1 and 3:4 the linear midpoint (0.875) is not the log midpoint (sqrt(0.75) = 0.866)
    assert nearest_bucket(870, 1000, PAPER_BUCKETS, "paper") == 1
    assert nearest_bucket(870, 1000, PAPER_BUCKETS, "log") == 0
    assert nearest_bucket(860, 1000, PAPER_BUCKETS, "log") == 1


def test_buckets_scale_to_the_native_size():
    toy = scaled_buckets(128)
    assert [(b.height, b.width) for b in toy] == [
        (128, 128), (144, 192), (192, 144), (144, 256), (256, 144), (160, 256), (256, 160), (128, 256), (256, 128)]
    assert scaled_buckets(512) == PAPER_BUCKETS
    assert [b.height for b in scaled_buckets(1024)][:3] == [1024, 1152, 1536]
    assert all(b.height % 64 == 0 and b.width % 64 == 0 for b in scaled_buckets(768, 64))


@pytest.mark.parametrize("text,match", [("512x", "WIDTHxHEIGHT"), ("500x512", "multiples of 8"), ("", "no buckets"),
                                        ("64x64,64x64", "repeated")])
def test_bad_bucket_lists(text, match):
    with pytest.raises(InvalidArgumentError, match=match):
        parse_buckets(text)


def test_parse_buckets_reads_width_by_height():
    assert parse_buckets("768x576, 512x512") == (Bucket(576, 768), Bucket(512, 512))




def test_buckets_scale_with_the_native_area():
    assert [(b.height, b.width) for b in scaled_buckets((512, 512), 8)] == PAPER_SIZES
    assert [(b.height, b.width) for b in scaled_buckets((1024, 1024), 8)] == [(2 * h, 2 * w) for h, w in PAPER_SIZES]
    assert [(b.height, b.width) for b in scaled_buckets((128, 128), 4)] == [(h // 4, w // 4) for h, w in PAPER_SIZES]
    assert scaled_buckets((768, 768), 8)[1] == Bucket(864, 1152)  # SD 2.1-v: x1.5, rounded to the factor
    assert scaled_buckets((512, 2048), 8) == scaled_buckets(1024, 8)  # a non-square native: its area


@pytest.mark.parametrize("hw,rule,expected", [
    ((512, 512), "paper", (512, 512)),
    ((1080, 1920), "paper", (576, 1024)),      # 16:9 landscape
    ((1920, 1080), "paper", (1024, 576)),
    ((1000, 4000), "paper", (512, 1024)),      # beyond 1:2: the end bucket
    ((4000, 1000), "paper", (1024, 512)),
    ((550, 800), "paper", (640, 1024)),        # r = 0.6875, halfway between 0.625 and 0.75: the later entry
    ((1463, 1000), "paper", (768, 576)),       # nearer 1.333 on the linear scale ...
    ((1463, 1000), "log", (1024, 640)),        # ... nearer 1.6 in log-ratio
    ((1000, 1463), "paper", (640, 1024)),      # the mirror, r = 0.684, goes to 5:8, not 3:4: the linear scale
    ((1000, 1463), "log", (640, 1024)),        # is not symmetric; log-ratio is (mirror of the 1.6 bucket)
])
def test_nearest_bucket_cases(hw, rule, expected):
    b = PAPER_BUCKETS[nearest_bucket(*hw, PAPER_BUCKETS, rule)]
    assert (b.height, b.width) == expected


def test_nearest_bucket_tie_goes_to_the_later_entry():
    table = [Bucket(1, 1), Bucket(2, 1)]
    assert nearest_bucket(3, 2, table) == 1  # r = 1.5: equally far from both
    assert nearest_bucket(3, 2, table[::-1]) == 1


def test_nearest_bucket_bad_input():
    with pytest.raises(AnysizeError, match="bucket rule"):
        nearest_bucket(1, 1, PAPER_BUCKETS, "cubic")
    with pytest.raises(InvalidArgumentError, match="positive"):
        nearest_bucket(0, 1, PAPER_BUCKETS)
    with pytest.raises(InvalidArgumentError, match="no buckets"):
        nearest_bucket(1, 1, [])
