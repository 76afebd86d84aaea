"""The trajectory viewer page (`dgt_interp.viz.viewer`, `dgt-interp view`, `Trajectory.to_html`).

Browser tests open the page in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium), move the slider to every step and compare what the page shows with the trajectory's own
records read through the model's tokenizer, and hover a lens cell to compare its top-1 with the
library's `LogitLens`. Without a browser they skip with the command that installs one. The other
tests (sizes, bad input, the CLI) need no browser.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dgt_interp import zoo
from dgt_interp.cli import main
from dgt_interp.lens import LensResult, LogitLens
from dgt_interp.models import TinySize, build_diffusion
from dgt_interp.testing import constructed_trajectory
from dgt_interp.tokenizer import load_tokenizer, position_labels, to_str_tokens
from dgt_interp.trajectory import Trajectory
from dgt_interp.viz.viewer import PAGE_K, ViewerError, load_patching, page_data, view_capture, write_page

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
ADD = "addition-diffusion"
needs_zoo = pytest.mark.skipif(ADD not in zoo.names(), reason="zoo model not shipped")


def shown(token: str) -> str:
    """What the page writes for a token (its `shown` function): newline / tab / empty made visible."""
    return "\u2205" if token == "" else token.replace("\n", "\u21b5").replace("\t", "\u2192")


# ---------------------------------------------------------------------------------------- browser


def no_browser(why: str):
    """Skip (fail in CI: .ci/run sets DGT_INTERP_REQUIRE_BROWSER=1 after installing the browser)."""
    if os.environ.get("DGT_INTERP_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        no_browser("selenium is not installed: pip install -e '.[dev]'")
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        no_browser(f"no headless Chromium for the viewer's browser tests; install it with `{INSTALL}`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    for _ in range(600):  # the page sets data-ready once drawn (a released-shape page takes seconds)
        if driver.execute_script("return document.body && document.body.dataset.ready === '1'"):
            return
        time.sleep(0.05)
    raise AssertionError(f"the page never finished drawing; console: {driver.get_log('browser')}")


ROWS_JS = """return ['row-input', 'row-argmax', 'row-sampled'].map(id =>
  [...document.querySelectorAll('#' + id + ' .tok')].map(e => e.textContent)).concat(
  [[...document.querySelectorAll('#row-argmax .tok')].map(e => e.dataset.accepted)]);"""


def check_every_step(driver, traj: Trajectory, tok) -> None:
    """Step through the page with the keyboard on the slider; compare every step with the records."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element(By.ID, "step")
    assert int(slider.get_attribute("max")) == traj.n_steps - 1
    slider.send_keys(Keys.HOME)
    for s in range(traj.n_steps):
        if s:
            slider.send_keys(Keys.ARROW_RIGHT)
        assert int(slider.get_attribute("value")) == s
        assert driver.find_element(By.ID, "step-label").text.startswith(f"step {s} /")
        inp, arg, smp, acc = driver.execute_script(ROWS_JS)
        assert arg == [shown(t) for t in to_str_tokens(tok, traj.argmax_canvas[s, 0])], f"step {s}"
        assert inp == [shown(t) for t in to_str_tokens(tok, traj.input_canvas[s, 0])], f"step {s}"
        assert smp == [shown(t) for t in to_str_tokens(tok, traj.sampled_canvas[s, 0])], f"step {s}"
        assert acc == ["1" if a else "0" for a in traj.accepted[s, 0].tolist()], f"step {s}"


def hover_lens_top1(driver, layer: int, pos: int) -> tuple[str, float]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cell = driver.find_element(By.CSS_SELECTOR, f".lens-cell[data-layer='{layer}'][data-pos='{pos}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
    ActionChains(driver).move_to_element(cell).perform()
    tip = driver.find_element(By.ID, "tooltip")
    assert tip.is_displayed()
    first = tip.find_elements(By.CSS_SELECTOR, "tr.topk")[0]
    token = json.loads(first.find_element(By.CSS_SELECTOR, "td.tt").get_attribute("textContent"))
    return token, float(first.find_element(By.CSS_SELECTOR, "td.p").get_attribute("textContent"))


@pytest.fixture(scope="module")
def tiny_run():
    """A random-init DiffusionGemma (char tokenizer): high entropy, so one or two tokens accepted per
    step and positions re-noised; lens and attention recorded."""
    model = build_diffusion(seed=0)
    traj = view_capture(model, "12+34=", attention=True, seed=1)
    return model, traj


def test_page_shows_every_step_of_a_diffusion_run(browser, tiny_run, tmp_path):
    model, traj = tiny_run
    tok = load_tokenizer(model)
    assert traj.n_steps >= 4 and not bool(traj.accepted.all())  # several steps, some positions re-noised
    path = traj.to_html(tmp_path / "run.html", model=model)
    open_page(browser, path)
    check_every_step(browser, traj, tok)
    texts = browser.execute_script("return [...document.querySelectorAll('#prompt .tok')].map(e => e.textContent)")
    assert texts == [shown(t) for t in traj.prompt_str_tokens(tokenizer=tok)]
    out = browser.execute_script("return [...document.querySelectorAll('#output .tok')].map(e => e.textContent)")
    assert out == [shown(t) for t in to_str_tokens(tok, traj.canvas_ids(None))]
    # the attention panel draws the recorded pattern of the selected step (query x cached + canvas keys)
    n_cells = browser.execute_script("return document.querySelectorAll('#attention .cell').length")
    pattern = traj["blocks.0.attn.hook_pattern"][traj.step_index(traj.n_steps - 1), 0, 0]
    assert n_cells == pattern.numel()
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # no script error


def test_hovering_a_lens_cell_shows_the_librarys_top1(browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    model, traj = tiny_run
    tok = load_tokenizer(model)
    res = LogitLens(model).run(traj, k=PAGE_K)  # the library's lens, computed apart from the page
    path = traj.to_html(tmp_path / "run.html", model=model)
    open_page(browser, path)
    slider = browser.find_element(By.ID, "step")
    for s, layer, pos in [(0, 0, 0), (traj.n_steps - 1, 2, 5), (traj.n_steps // 2, 3, 7)]:
        slider.send_keys(Keys.HOME)
        for _ in range(s):
            slider.send_keys(Keys.ARROW_RIGHT)
        token, prob = hover_lens_top1(browser, layer, pos)
        si, li, pi = res.steps.index(s), res.layers.index(layer), res.positions.index(pos)
        assert token == to_str_tokens(tok, [res.top_ids[si, li, 0, pi, 0]])[0]
        # the page stores probabilities as uint16 (steps of 1/65535) and prints 4 decimals
        assert prob == pytest.approx(float(res.top_probs[si, li, 0, pi, 0]), abs=1e-4)


def test_play_advances_and_pause_stops(browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By

    model, traj = tiny_run
    path = traj.to_html(tmp_path / "run.html", model=model)
    open_page(browser, path)
    play = browser.find_element(By.ID, "play")
    play.click()
    time.sleep(1.5)  # the page advances one step every 0.6 s
    play.click()
    s = int(browser.find_element(By.ID, "step").get_attribute("value"))
    assert s >= 1
    time.sleep(1.0)
    assert int(browser.find_element(By.ID, "step").get_attribute("value")) == s


@needs_zoo
def test_page_of_the_ar_twin_shows_one_token_per_step(browser, addition_ar, tmp_path):
    traj = view_capture(addition_ar, "1234+5678=")
    path = write_page(traj, tmp_path / "ar.html", model=addition_ar)
    open_page(browser, path)
    check_every_step(browser, traj, load_tokenizer(addition_ar))
    assert browser.execute_script("return document.querySelectorAll('.lens-cell').length") > 0


@needs_zoo
def test_cli_page_of_a_saved_trajectory_with_patching(browser, addition_diffusion, tmp_path, capsys):
    """`dgt-interp view --trajectory DIR --model M --patching DIR`: the saved run's steps, and the patching
    grid's values on hover."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    traj = view_capture(addition_diffusion, "12+34=", seed=0)
    traj.save(tmp_path / "traj")
    patch = tmp_path / "patch"
    make_patching_dir(patch, traj, load_tokenizer(addition_diffusion))
    out = tmp_path / "saved.html"
    assert main(["view", "--trajectory", str(tmp_path / "traj"), "--model", ADD, "--patching", str(patch),
                 "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    open_page(browser, out)
    check_every_step(browser, Trajectory.load(tmp_path / "traj"), load_tokenizer(addition_diffusion))
    grid = load_patching(patch)["sweeps"]["resid_pre"]  # normalised like `dgt-interp patch`'s figures
    s = traj.n_steps - 1
    Select(browser.find_element(By.ID, "patch-sweep")).select_by_value("resid_pre")
    cell = browser.find_elements(By.CSS_SELECTOR, "#patching .patch-cell")
    n_layers = grid.shape[1]
    assert len(cell) == n_layers * grid.shape[2]
    # row 0 is the last layer; hover layer 1, position 3
    target = cell[(n_layers - 1 - 1) * grid.shape[2] + 3]
    ActionChains(browser).move_to_element(target).perform()
    text = browser.find_element(By.ID, "tooltip").text
    assert f"step {s}, layer 1, position 3" in text
    # int16 with one scale per sweep (error <= max|value| / 32767 / 2) and 4 printed decimals
    assert float(text.rsplit(":", 1)[1]) == pytest.approx(float(grid[s, 1, 3]), abs=float(grid.abs().max()) / 32767 + 1e-4)


# ---------------------------------------------------------------------------------------- no browser


def make_patching_dir(root: Path, traj: Trajectory, tok, *, prompt_tokens=None, steps=None) -> Path:
    """A `dgt-interp patch`-shaped output dir for `traj`'s shapes (random grids; the real command takes a
    minute on the zoo model, and the viewer only reads the files)."""
    n_layers = traj.model.config.get_text_config().num_hidden_layers
    s_n, length = steps or traj.n_steps, traj.argmax_canvas.shape[-1]
    g = torch.Generator().manual_seed(0)
    tensors = {"resid_pre": torch.randn(s_n, n_layers, length, generator=g),
               "attn_out": torch.randn(s_n, n_layers, length, generator=g),
               "self_cond": torch.randn(s_n, length, generator=g),
               "clean_metric": torch.tensor(3.0), "corrupted_metric": torch.tensor(-1.0)}
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "patching.safetensors"))
    labels = prompt_tokens or position_labels(traj.prompt_str_tokens(tokenizer=tok), "p")
    (root / "patching.json").write_text(json.dumps({"clean": "12+34=", "corrupted": "12+35=", "metric": "logit_diff",
                                                    "clean_tokens": labels, "steps": s_n}))
    return root


@needs_zoo
def test_page_data_matches_the_records_without_a_browser(addition_diffusion):
    """The data the page decodes: token indices into one string table equal the records as text."""
    import base64

    import numpy as np

    traj = view_capture(addition_diffusion, "1234+5678=")
    tok = load_tokenizer(addition_diffusion)
    data = page_data(traj, model=addition_diffusion)
    arr = data["steps"]["argmax_canvas"]
    idx = np.frombuffer(base64.b64decode(arr["b64"]), dtype="<u2").reshape(arr["shape"])
    strings = data["strings"]
    for s in range(traj.n_steps):
        assert [strings[i] for i in idx[s]] == to_str_tokens(tok, traj.argmax_canvas[s, 0])
    assert data["lens"]["layers"] == list(range(addition_diffusion.config.get_text_config().num_hidden_layers))
    assert data["output"]["text"] == "6912"  # 1234 + 5678: the zoo model's answer, checked by hand


def released_shape_trajectory():
    """A constructed run of the released shapes: canvas 256, 48 steps, 30 layers, vocabulary 262,144,
    prompt 256 tokens; random token ids (the worst case for the string table)."""
    s_n, length, vocab, n_layers, k = 48, 256, 262_144, 30, PAGE_K
    g = torch.Generator().manual_seed(0)
    arg = torch.randint(0, vocab, (s_n, 1, length), generator=g)
    acc = torch.rand(s_n, 1, length, generator=g) < 0.1
    traj = constructed_trajectory(arg, accepted=acc, prompt_length=256)
    probs = torch.rand(s_n, n_layers, 1, length, k, generator=g).sort(-1, descending=True).values
    lens = LensResult("logit", list(range(s_n)), list(range(n_layers)), list(range(length)), [],
                      top_ids=torch.randint(0, vocab, (s_n, n_layers, 1, length, k), generator=g), top_probs=probs,
                      entropy=torch.zeros(s_n, n_layers, 1, length), kl_to_final=torch.zeros(s_n, n_layers, 1, length),
                      target_probs=torch.zeros(s_n, n_layers, 1, length, 0), valid=torch.ones(s_n, 1, length, dtype=torch.bool))
    patching = {name: torch.randn(s_n, n_layers, length, generator=g) for name in ("resid_pre", "attn_out", "mlp_out")}
    patching.update({name: torch.randn(s_n, length, generator=g) for name in ("self_cond", "canvas")})
    return traj, lens, patching


def test_page_of_the_released_shapes_stays_under_20_mb(tmp_path):
    """Top-k only: lens top-3 of 48 steps x 30 layers x 256 positions, all five patching sweeps and the
    canvases at vocabulary 262,144 (ids past the BPE test tokenizer's 16,384 show as '<id N>', longer
    than a real token, so this overestimates the string table)."""
    from dgt_interp.models.bpe import bpe_tokenizer

    traj, lens, patching = released_shape_trajectory()
    path = write_page(traj, tmp_path / "released.html", tokenizer=bpe_tokenizer(), lens=lens, patching=patching)
    size = path.stat().st_size
    print(f"released-shape page: {size / 1e6:.1f} MB")
    assert size < 20 * 10**6


@needs_zoo
def test_zoo_page_is_small(addition_diffusion, tmp_path):
    path = write_page(view_capture(addition_diffusion, "1234+5678=", attention=True), tmp_path / "zoo.html",
                      model=addition_diffusion)
    assert path.stat().st_size < 200_000  # docs/viewer.md states the measured size (~30 kB)


def test_page_is_self_contained(tiny_run, tmp_path):
    model, traj = tiny_run
    html = traj.to_html(tmp_path / "run.html", model=model).read_text()
    for needle in ("http://", "https://", "<script src", "<link ", "@import", "url("):
        assert needle not in html


def test_released_shape_page_draws_in_the_browser(browser, tmp_path):
    """The 20 MB-class page loads and steps in Chromium (its last step's argmax canvas as the records say)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from dgt_interp.models.bpe import bpe_tokenizer

    traj, lens, patching = released_shape_trajectory()
    tok = bpe_tokenizer()
    path = write_page(traj, tmp_path / "released.html", tokenizer=tok, lens=lens, patching=patching)
    open_page(browser, path)
    browser.find_element(By.ID, "step").send_keys(Keys.END)
    _, arg, _, acc = browser.execute_script(ROWS_JS)
    assert arg == [shown(t) for t in to_str_tokens(tok, traj.argmax_canvas[-1, 0])]
    assert acc == ["1" if a else "0" for a in traj.accepted[-1, 0].tolist()]


# ---------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_writes_nothing(tiny_run, tmp_path):
    model, traj = tiny_run
    tok = load_tokenizer(model)
    with pytest.raises(ViewerError, match="does not exist; create it first"):
        traj.to_html(tmp_path / "missing" / "run.html", model=model)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ViewerError, match="is a directory"):
        traj.to_html(tmp_path, model=model)
    assert traj.n_steps == 48  # the random-init model runs every denoising step
    other_shape = make_patching_dir(tmp_path / "p1", traj, tok, steps=traj.n_steps + 1)
    with pytest.raises(ViewerError, match=r"another run: sweep '\w+' has shape \[49, 4, 8\], this run needs \[48, 4, 8\]"):
        traj.to_html(tmp_path / "a.html", model=model, patching=other_shape)
    other_prompt = make_patching_dir(tmp_path / "p2", traj, tok, prompt_tokens=["p0:'<bos>'", "p1:'9'"])
    with pytest.raises(ViewerError, match="another run: its clean prompt is"):
        traj.to_html(tmp_path / "a.html", model=model, patching=other_prompt)
    (tmp_path / "p3").mkdir()
    (tmp_path / "p3" / "patching.json").write_text("{}")
    (tmp_path / "p3" / "patching.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ViewerError, match="is corrupt"):
        traj.to_html(tmp_path / "a.html", model=model, patching=tmp_path / "p3")
    with pytest.raises(ViewerError, match="holds no patching result"):
        traj.to_html(tmp_path / "a.html", model=model, patching=tmp_path / "nope")
    with pytest.raises(ViewerError, match="k=0"):
        traj.to_html(tmp_path / "a.html", model=model, k=0)
    assert not (tmp_path / "a.html").exists() and not list(tmp_path.glob(".a.html.*"))
    for e in (ViewerError,):
        assert issubclass(e, ValueError)


def test_attention_past_the_budget_is_refused(tiny_run, tmp_path):
    model, traj = tiny_run
    with pytest.raises(ViewerError, match="record fewer layers or steps"):
        traj.to_html(tmp_path / "a.html", model=model, max_attention_bytes=10)


def test_page_of_a_subword_model_shows_its_tokens(browser, tmp_path):
    """A random-init model with the byte-level BPE tokenizer (16,384 subword tokens): the page shows
    tokens as the tokenizer's text (' foo', not 'Ġfoo') at every step."""
    from dgt_interp.models import load_model
    from dgt_interp.models.bpe import bpe_tokenizer

    size = TinySize(vocab_size=16_384, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=32, num_experts=2, top_k_experts=1, moe_intermediate_size=32,
                    intermediate_size=64, max_position_embeddings=64, canvas_length=8)
    build_diffusion(size, seed=0).save_pretrained(tmp_path / "bpe_model")
    bpe_tokenizer().save_pretrained(tmp_path / "bpe_model")
    model = load_model(tmp_path / "bpe_model")
    traj = view_capture(model, "import os\nprint(os.getcwd())", max_denoising_steps=4)
    tok = load_tokenizer(model)
    path = traj.to_html(tmp_path / "bpe.html", model=model)
    open_page(browser, path)
    check_every_step(browser, traj, tok)
    prompt = browser.execute_script("return [...document.querySelectorAll('#prompt .tok')].map(e => e.textContent)")
    assert prompt == [shown(t) for t in traj.prompt_str_tokens(tokenizer=tok)]
    assert any(t.startswith(" ") or "\u21b5" in t for t in prompt)  # subword text with spaces / newlines


def test_saved_trajectory_without_a_model_shows_ids(tmp_path, capsys):
    """`dgt-interp view --trajectory DIR` without --model: no tokenizer, so tokens show as '<id N>' (and no lens)."""
    model = build_diffusion(seed=0)
    traj = view_capture(model, "1+2=", max_denoising_steps=3)
    traj.save(tmp_path / "t")
    assert main(["view", "--trajectory", str(tmp_path / "t"), "--out", str(tmp_path / "p.html")]) == 0
    data = page_data(Trajectory.load(tmp_path / "t"))
    assert data["tokenizer"] is False and data["lens"] is None
    assert set(data["strings"]) == {f"<id {i}>" for i in torch.cat([traj.sequences.flatten(),
                                                                     traj.input_canvas.flatten(),
                                                                     traj.sampled_canvas.flatten(),
                                                                     traj.argmax_canvas.flatten()]).unique().tolist()}
    assert (tmp_path / "p.html").stat().st_size > 0
