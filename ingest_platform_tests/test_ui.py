"""The newcomer's path through the Dagster UI, in a real browser (issue 17): Debian's Chromium driven by
Playwright (``executable_path``, headless, no browser download) against ONE ``dagster dev`` per test session,
started by the same ``LocalStack`` as ``make dev`` on a free port with a small catalog, the session's broker
and a temporary lake. The catalog's lag threshold and SLO are out of reach, so the lag sensor starts no run:
runs come from the UI, and every sensor tick says why it skipped.

Pages: the asset catalog, Materialize from an asset page to a successful run, the asset page's columns,
metadata and plots, the checks tab, the lag sensor's page and a tick's skip reason. Each test leaves a
screenshot in ``test-artifacts/ui/`` (gitignored; the path is printed at the end of the session).
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from ingest_platform_tests.conftest import SCREENSHOTS

pytestmark = [pytest.mark.kafka, pytest.mark.ui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")  # deploy/local/debian-packages.txt
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
#: Generous: the machine is shared; a run is launched, started and checked within this.
RUN_TIMEOUT_MS = 180_000
ORDERS_BACKLOG = 500  # DEMO_VOLUME orders x scale 0.005

CATALOG = """
defaults:
  lag_threshold: 100000000           # the lag sensor never starts a run here: runs come from the UI
  slo: {{latency_s: 86400, file_size_mb: {{min: 0.001, max: 1024}}}}
datasets:
  - name: orders
    source: shop
    topic: {prefix}.shop.orders
    format: json
    event_time_field: created_at
    partition_by: [date]
    schema:
      total: {{type: double, description: "Order total in the order's currency."}}
      order_id: {{description: "The shop's order number."}}
  - name: clicks
    source: shop
    topic: {prefix}.shop.clicks
    format: json
    partition_by: [date]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ui_stack(kafka_broker, tmp_path_factory, request):
    from ingest_platform.dev.local_stack import LocalStack

    root = tmp_path_factory.mktemp("ui")
    (root / "catalog.yaml").write_text(CATALOG.format(prefix=f"ui{uuid.uuid4().hex[:6]}"))
    stack = LocalStack(root / "stack", port=_free_port(), bootstrap=kafka_broker.bootstrap,
                       catalog_path=str(root / "catalog.yaml"), rate=0, scale=0.005, echo=lambda *_: None)  # fmt: skip
    stack.start()
    _graphql(stack.url, "mutation { setNuxSeen }")  # what the "join the community" dialog's Skip button sends
    yield stack
    stack.stop()
    request.config.stash[SCREENSHOTS] = ARTIFACTS  # conftest's terminal summary prints the folder


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium with `make system-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _graphql(url: str, query: str) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _open(browser, stack, path: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.url + path)
    return page


@pytest.fixture
def page(browser, ui_stack, request):
    pages = []

    def open_(path: str):
        pages.append(_open(browser, ui_stack, path))
        return pages[-1]

    yield open_
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for index, opened in enumerate(pages):
        suffix = f"-{index}" if index else ""
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}{suffix}.png"), full_page=True)
        opened.context.close()


@pytest.fixture(scope="session")
def materialized_from_the_ui(browser, ui_stack) -> str:
    """Materialize lake/shop/orders the way a user does: its page, the Materialize button, the run's page
    until it says Success. Returns the run's short id."""
    page = _open(browser, ui_stack, "/assets/lake/shop/orders")
    page.locator("button", has_text="Materialize").first.click()
    toast = page.get_by_text(re.compile(r"Launched run \w+"))
    toast.wait_for()
    run = re.search(r"Launched run (\w+)", toast.inner_text()).group(1)
    page.goto(ui_stack.url + "/runs")
    page.get_by_role("link", name=run).first.click()
    page.get_by_text("Success", exact=True).first.wait_for(timeout=RUN_TIMEOUT_MS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "materialize-run-page.png"), full_page=True)
    page.context.close()
    return run


def test_the_catalog_lists_the_tables_and_the_downstream_example(page):
    catalog = page("/assets")
    for asset in ("lake / shop / orders", "lake / shop / clicks", "analytics / shop / orders_daily"):
        catalog.get_by_text(asset, exact=True).first.wait_for(state="attached")  # long names show truncated
    body = catalog.inner_text("body")
    assert "Kafka topic" in body and "ingested into a Delta table" in body


def test_materialize_from_the_ui_runs_to_success(page, ui_stack, materialized_from_the_ui):
    runs = page("/runs")
    runs.get_by_role("link", name=materialized_from_the_ui).first.click()  # the run's own page
    runs.get_by_text("Success", exact=True).first.wait_for()
    runs.get_by_text("lake__shop__orders", exact=False).first.wait_for(state="attached")  # its step
    table = DeltaTable(str(ui_stack.lake_root / "shop" / "orders"))  # what the run wrote, read independently
    assert table.to_pyarrow_dataset().count_rows() == ORDERS_BACKLOG


def test_the_asset_page_shows_columns_metadata_and_plots(page, materialized_from_the_ui):
    asset = page("/assets/lake/shop/orders")
    asset.get_by_text("Columns", exact=True).first.wait_for()
    asset.get_by_text("_kafka_offset", exact=True).first.wait_for()
    body = asset.inner_text("body")
    assert "Order total in the order's currency." in body  # the catalog's description
    assert "Kafka offset of the record" in body  # the engine's own columns are described
    assert "array<struct<" in body  # after the run: the Delta schema (items)
    assert "lake.shop.orders" in body  # dagster/table_name
    asset.locator("button", has_text="Plots").first.click()
    asset.get_by_text("records_per_s", exact=True).first.wait_for()
    asset.get_by_text("rows_written", exact=True).first.wait_for()

    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    # The lag sensor's latest observation (how old it is) is the newest event once a tick followed the UI's
    # materialization; the events list does not refresh by itself, so reload it until a tick has come (≤ 30 s).
    events = page("/assets/lake/shop/orders?view=events")
    for _ in range(8):
        try:
            events.get_by_text("ingest_lag_sensor tick (every 30 s)", exact=True).first.wait_for(timeout=12_000)
            break
        except PlaywrightTimeoutError:
            events.reload()
    events.get_by_text("ingest_lag_sensor tick (every 30 s)", exact=True).first.wait_for(timeout=12_000)
    events.get_by_text("observed_at", exact=True).first.wait_for()


def test_the_checks_tab_lists_every_check_with_its_result(page, materialized_from_the_ui):
    checks = page("/assets/lake/shop/orders?view=checks")
    for name in ("file_size", "throughput_slo", "latency_slo", "freshness", "no_loss"):
        checks.get_by_text(name, exact=True).first.wait_for()
    assert checks.get_by_text("Succeeded", exact=True).count() >= 5
    checks.get_by_text("no_loss", exact=True).first.click()
    checks.get_by_text("Offset ledger contiguous per partition", exact=False).first.wait_for()


def test_the_sensor_page_says_why_a_tick_requested_no_run(page):
    sensor = page("/locations/ingest_platform.definitions/sensors/ingest_lag_sensor")
    sensor.get_by_text("Consumer lag of every dataset", exact=False).first.wait_for()
    result = sensor.get_by_role("button", name="0 runs requested").first  # a tick's Result: opens its details
    result.wait_for(timeout=90_000)  # the first tick comes within the sensor's 30 s interval
    result.click()
    reason = sensor.get_by_role("dialog").get_by_text(re.compile("Skip reason: no dataset needs a run: "))
    reason.wait_for()
    text = reason.inner_text()
    assert "orders" in text and "clicks" in text  # per dataset, with why
    assert re.search(r"(caught up|not due) \(\d\): ", text)
