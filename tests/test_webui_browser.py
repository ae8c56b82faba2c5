"""LLaMA Board for real: a headless Chromium drives `llamafactory-cli webui`, and the runner launches a run."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import board_values, build_board, cli_env


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("SIMPO_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def webui(tmp_path):
    port = _free_port()
    env = cli_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    log = (tmp_path / "webui.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("llamafactory-cli")), "webui"], cwd=tmp_path, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "webui.log").read_text()[-3000:]
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(process.pid, 9)
        process.wait()


def test_browser_preview_shows_a_simpo_command(webui, tiny_assets) -> None:
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's `chromium` package (make test does this when it can)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(webui, wait_until="domcontentloaded")
            stage = page.get_by_label("Stage", exact=True)
            stage.wait_for(timeout=120_000)
            stage.click()
            page.get_by_role("option", name="SimPO").click()
            dpo_only = [page.locator("input[type=number][aria-label*='Beta value']"),
                        page.locator("input[type=number][aria-label*='Ftx gamma']"),
                        page.get_by_label("Loss type", exact=True)]  # fmt: skip
            ppo_only = [page.get_by_role("textbox", name="Reward model"),  # its name goes on with its info line
                        page.get_by_role("checkbox", name="Score norm", exact=True)]  # fmt: skip
            for widget in dpo_only + ppo_only:  # the host's DPO beta, ftx weight, loss type and PPO's do not apply
                expect(widget).to_be_hidden(timeout=30_000)
            expect(page.locator("input[type=number][aria-label*='SimPO beta']")).to_be_visible()
            learning_rate = page.get_by_role("textbox", name="Learning rate")  # its name goes on with its info
            expect(learning_rate).to_have_value("1e-6", timeout=30_000)  # SimPO's, where the host's 5e-5 stood
            page.get_by_label("Model name", exact=True).click()
            page.get_by_role("option").first.click()
            page.locator("label", has_text="Model path").locator("textarea").fill(str(tiny_assets["model"]))
            dataset = page.get_by_label("Dataset", exact=True).first
            dataset.click()
            page.get_by_role("option", name="simpo_demo").click(timeout=30_000)  # bundled with the plugin, offered
            beta = page.locator("input[type=number][aria-label*='SimPO beta']")
            beta.fill("3.5")
            beta.press("Enter")
            margin = page.locator("input[type=number][aria-label*='Target margin']")
            expect(margin).to_have_value("0.5")
            page.get_by_label("Margin given as", exact=True).click()
            page.get_by_role("option", name="gamma", exact=True).click()
            expect(margin).to_have_value("1.75", timeout=30_000)  # gamma = (gamma/beta) x beta: the unit converts
            page.get_by_role("button", name="Preview command").click()
            page.get_by_text("--stage simpo").wait_for(timeout=60_000)
            command = page.locator("code").filter(has_text="--stage simpo").inner_text()
            page.screenshot(path=str(ARTIFACTS / "webui_simpo_preview.png"), full_page=True)
            simpo_only = page.locator("input[type=number][aria-label*='SimPO beta']")
            stage.click()
            page.get_by_role("option", name="DPO", exact=True).click()
            for widget in dpo_only + ppo_only:  # back to DPO: the host's widgets are shown again ...
                expect(widget).to_be_visible(timeout=30_000)
            expect(simpo_only).to_be_hidden(timeout=30_000)  # ... and SimPO's are not
            expect(learning_rate).to_have_value("5e-5", timeout=30_000)  # and the host's learning rate is back
            page.screenshot(path=str(ARTIFACTS / "webui_dpo_widgets.png"), full_page=True)
            stage.click()
            page.get_by_role("option", name="SimPO").click()
            expect(simpo_only).to_be_visible(timeout=30_000)
            for widget in dpo_only:
                expect(widget).to_be_hidden(timeout=30_000)
            page.get_by_label("Model name", exact=True).scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "webui_simpo.png"), full_page=True)
        finally:
            browser.close()
    assert "--pref_beta 3.5" in command
    assert "--simpo_gamma 1.75" in command and "--simpo_gamma_beta_ratio" not in command
    assert "--pref_loss" not in command
    assert "--dataset simpo_demo" in command and "--learning_rate 1e-06" in command


def test_a_run_started_from_the_ui_trains_the_tiny_model(tiny_assets, tmp_path, monkeypatch) -> None:
    """The host's runner writes the YAML and launches `llamafactory-cli train`; the model lands in output_dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", cli_env()["PATH"])
    _, engine = build_board()
    data = board_values(
        engine,
        **{
            "top.lang": "en",
            "top.model_name": "Llama-3-8B",
            "top.model_path": str(tiny_assets["model"]),
            "top.finetuning_type": "full",
            "top.template": "default",
            "train.training_stage": "SimPO",
            "train.dataset_dir": str(tiny_assets["dataset_dir"]),
            "train.dataset": ["simpo_synthetic"],
            "train.learning_rate": "1e-3",
            "train.num_train_epochs": "1.0",
            "train.max_samples": "64",
            "train.cutoff_len": 128,
            "train.batch_size": 8,
            "train.gradient_accumulation_steps": 1,
            "train.compute_type": "fp32",
            "train.output_dir": "ui_run",
            "train.extra_args": '{"optim": "adamw_torch", "preprocessing_num_workers": 1}',
        },
    )
    list(engine.runner.run_train(data))  # blocks until the child process ends, like the UI's progress loop
    output_dir = tmp_path / "saves" / "Llama-3-8B" / "full" / "ui_run"
    assert (output_dir / "model.safetensors").is_file(), sorted(p.name for p in output_dir.glob("*"))
    assert (output_dir / "training_loss.png").is_file()
    assert "SimPO objective: beta=2" in (output_dir / "running_log.txt").read_text()
