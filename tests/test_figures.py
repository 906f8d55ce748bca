"""convex_attention.io.figures: the figure style, the environment line and save (PNG and PDF)."""
import os

import matplotlib.pyplot as plt

from convex_attention.io import figures


def test_env_line():
    env_line = figures.env_line
    assert "torch 2.13.0" in env_line({"torch": "2.13.0", "processor": "AMD", "torch_threads": 2})
    assert env_line(None) == ""
    assert "$" not in env_line({"torch": "$x$", "processor": "a"}).replace(r"\$", "")  # no mathtext from a file


def test_sci_and_plain_are_safe_to_draw():
    assert figures.sci(3.2e-4) == r"3.2\times10^{-4}" and figures.sci(9.99e-5) == r"1.0\times10^{-4}"
    assert figures.sci(0) == "0" and figures.sci(12.5) == "12.5"
    assert figures.plain("a$b$" + "x" * 100, 10) == "a\\$b\\$xxxxx…" and "\n" not in figures.plain("a\nb")


def test_save_writes_png_and_pdf_with_the_footer_below_everything(tmp_path):

    fig, ax = plt.subplots(figsize=(figures.HALF_WIDTH, 2))
    ax.plot([1, 2], [3, 4])
    env = {"torch": "2.13.0", "processor": "cpu", "torch_threads": 1}
    path = figures.save(fig, str(tmp_path / "f.png"), env)
    assert os.path.getsize(path) > 1000 and os.path.getsize(tmp_path / "f.pdf") > 1000
    (footer,) = [t for t in fig.texts if t.get_text() == figures.env_line(env)]
    assert footer.get_position()[1] < 0  # below the axes and their labels
