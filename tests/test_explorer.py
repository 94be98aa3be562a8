"""The block and model explorer (``--http``) on a running network: what each page shows is
checked against the entry node's own chain, in a real headless Chromium (Debian's package,
installed by ``make browser``) that logs in, follows links and saves screenshots; and over plain
HTTP, who may read it and what a wrong request gets."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_job, start_network

ROUNDS = 2


@dataclass
class Explorer:
    entry: Any
    url: str
    store: Any  # the entry node's ledger, read directly
    job_id: str


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    from node.dev.launcher import free_port, stop_all, wait_until
    from sql.store import LedgerStore

    tmp, started = tmp_path_factory.mktemp("explorer"), []
    port = free_port()
    try:
        entry, _, _ = start_network(tmp, lambda name: None, started, 2, entry_args=["--http", str(port)])
        job = {"dataset": "digits", "rounds": str(ROUNDS), "partition": "pathological", "batch_size": "16", "lr": "0.05"}
        run_job(entry, {**job, "strategy": "fedavg"})  # a second job, for the chart comparing them
        status = run_job(entry, job)
        wait_until(lambda: entry.status().pending_transactions == 0, 30, "the job's last records in a block")
        store = LedgerStore(f"sqlite:///{entry.home / 'ledger.db'}", create=False)
        yield Explorer(entry, f"https://127.0.0.1:{port}", store, status.job_id)
        store.close()
    finally:
        stop_all(started, timeout=5)


# --- over plain HTTP -------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def _fetch(url: str, token: str | None = None, accept: str = "text/html", data: bytes | None = None,
           method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the network's own CA
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    headers = {"Accept": accept, **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_only_the_operator_reads_the_explorer(explorer):
    code, headers, body = _fetch(explorer.url + "/blocks")  # a browser: to the login page
    assert code == 303 and headers["location"] == "/login?next=%2Fblocks"
    code, _, body = _fetch(explorer.url + "/blocks", accept="application/json")  # a script: refused, saying how
    assert code == 401 and b"admin token" in body
    assert _fetch(explorer.url + "/blocks", token="0" * 64)[0] == 401
    code, _, body = _fetch(explorer.url + "/login", data=b"token=wrong&next=/", method="POST")
    assert code == 401 and b"that is not the admin token" in body
    form = urllib.parse.urlencode({"token": explorer.entry.token, "next": "//elsewhere.example/"}).encode()
    code, headers, _ = _fetch(explorer.url + "/login", data=form, method="POST")
    assert code == 303 and headers["location"] == "/"  # never to another site
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    code, headers, _ = _fetch(explorer.url + "/", token=explorer.entry.token)
    assert code == 200 and "default-src 'none'" in headers["content-security-policy"]
    assert _fetch(explorer.url + "/", token=explorer.entry.token, method="PUT")[0] == 405  # read-only


def test_what_anyone_may_send_is_bounded(explorer):
    code, _, body = _fetch(explorer.url + "/login", data=b"token=" + b"x" * 10_000, method="POST")
    assert code == 413  # before the rest is read
    request = urllib.request.Request(explorer.url + "/login", data=b"token=x", method="POST",
                                     headers={"Origin": "https://elsewhere.example", "Accept": "text/html"})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=30)
    assert refused.value.code == 403  # a form posted from another site
    token = explorer.entry.token
    assert _fetch(f"{explorer.url}/block/{10**30}", token=token)[0] == 404  # beyond the ledger's integers
    assert _fetch(f"{explorer.url}/blocks?below={10**30}", token=token)[0] == 200
    code, _, body = _fetch(f"{explorer.url}/search?q=%C2%B2", token=token)  # '²' is a digit to Python
    assert code == 200 and b"Nothing on this supernode's chain matches" in body


def test_downloads_and_refusals(explorer):
    token, model_hash = explorer.entry.token, explorer.store.rounds(explorer.job_id)[-1]["global_hash"]
    code, headers, body = _fetch(f"{explorer.url}/model/{model_hash}/download", token=token)
    assert code == 200 and hashlib.sha256(body).hexdigest() == model_hash == headers["x-model-sha256"]
    code, _, body = _fetch(f"{explorer.url}/model/not-a-hash", token=token)
    assert code == 404 and b"is not a model hash (64 hex digits)" in body
    code, _, body = _fetch(f"{explorer.url}/block/99999", token=token)
    assert code == 404 and b"no block at height 99999" in body
    code, _, body = _fetch(f"{explorer.url}/job/nope", token=token)
    assert code == 404 and b"no job" in body


# --- in a browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chrome
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--ignore-certificate-errors", "--window-size=1280,1100"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()


def test_the_explorer_in_a_browser(explorer, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    store, shots = explorer.store, []
    keep = Path(os.environ["FEDLEDGER_SCREENSHOTS"]) if os.environ.get("FEDLEDGER_SCREENSHOTS") else None

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    def links(css: str) -> list[str]:
        return [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, css)]

    def shot(name: str) -> None:
        path = tmp_path / f"{name}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000, f"no screenshot of {name}"
        shots.append(path)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)

    browser.get(explorer.url + "/jobs")  # not logged in: the login page, then back where we were going
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(explorer.entry.token)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 20).until(lambda b: b.current_url.endswith("/jobs"))

    browser.get(explorer.url + "/")  # the overview: the chain's head
    head = store.head()
    assert text("head-height") == str(head.height)
    shot("overview")

    browser.find_element(By.LINK_TEXT, str(head.height)).click()  # the head block, and each of its transactions
    assert text("block-hash") == head.hash == store.block_hash(head.height)
    block = store.block(head.height)
    assert text("tx-count") == str(len(block.transactions))
    for link, tx in zip(links("a.tx"), block.transactions, strict=True):
        browser.get(link)
        assert (text("tx-hash"), text("kind"), text("signer")) == (tx.hash, tx.kind, tx.sender)
    browser.get(explorer.url + f"/block/{head.height}")
    browser.find_element(By.ID, "previous").click()
    assert text("block-hash") == store.block_hash(head.height - 1)

    browser.get(explorer.url + "/jobs")  # both jobs in one chart; then the job: its rounds, curves, each edge node
    assert browser.execute_script("return document.getElementById('compared').naturalWidth") > 0
    browser.find_element(By.LINK_TEXT, explorer.job_id).click()
    assert text("job-id") == explorer.job_id and text("rounds-done") == str(ROUNDS)
    assert browser.execute_script("return document.getElementById('curves').naturalWidth") > 0  # the chart drew
    accuracies = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.edges td.accuracy")]
    assert len(accuracies) == 2 and all(a.endswith("%") for a in accuracies)
    shot("job")

    rounds = store.rounds(explorer.job_id)  # the last global model: what made it, from the chain
    assert links("a.global")[-1].endswith(rounds[-1]["global_hash"])
    browser.get(links("a.global")[-1])
    assert text("model-hash") == rounds[-1]["global_hash"]
    updates = {tx.payload["hash"] for _, tx in store.transactions(kind="MODEL_UPDATE", job_id=explorer.job_id,
                                                                   round=ROUNDS)}
    assert {link.rsplit("/", 1)[1] for link in links("a.update")} == updates and len(updates) == 2
    assert links("#download")
    shot("model")

    browser.get(links("a.update")[0])  # an update: aggregated into its supernode's partial
    assert "MODEL_UPDATE" in [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td.kind")]

    search = browser.find_element(By.NAME, "q")  # search by a prefix of a model's hash
    search.send_keys(rounds[-1]["global_hash"][:10])
    search.submit()
    WebDriverWait(browser, 20).until(lambda b: "/model/" in b.current_url)
    assert text("model-hash") == rounds[-1]["global_hash"]

    browser.get(explorer.url + "/network")  # both supernodes, each with its edge node
    assert len(browser.find_elements(By.CSS_SELECTOR, "h2.supernode")) == 2
    edges = {link.rsplit("/", 1)[1] for link in links("a.edge")}
    assert edges == {n.node_id for n in store.nodes(role="EN")}
    shot("network")

    browser.get(explorer.url + "/verify")
    browser.find_element(By.ID, "verify-now").click()
    WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda b: text("verify-status").startswith("OK"))
    assert text("verify-status").startswith(f"OK: {head.height + 1} blocks")
    shot("verify")
    assert len(shots) == 5


def test_edge_nodes_serve_no_explorer(tmp_path, caplog):
    import main

    assert main.main(["--port", "1", "--nt", "EN", "--entry", "127.0.0.1:1", "--home", str(tmp_path),
                      "--http", "2"]) == 2
    assert "--http serves the explorer from a supernode's copy of the chain; edge nodes keep none" in caplog.text
