"""The event loop's lag as a Prometheus histogram, scraped over HTTP from a running server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from support import StartServer, make_config

from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.loop_lag import LOOP_LAG_INTERVAL_S, LoopLagMonitor
from yunpian_sms_server.metrics import LOOP_LAG_BUCKETS_S

LAG: Final = "yunpian_sms_event_loop_lag_seconds"
# The loop is held this long on purpose; the monitor may have slept up to one interval of it
# already, so it is held that much longer to see at least this much lag.
BLOCK_S: Final = 0.3
# The bucket below BLOCK_S: an observation above it can only come from the block.
BLOCK_BUCKET: Final = max(bound for bound in LOOP_LAG_BUCKETS_S if bound < BLOCK_S)
SCRAPE_PATIENCE_S: Final = 5.0

Histogram = dict[str, float]  # "count", "sum", and "le=<bound>" for each bucket


async def scrape_lag(server: SmsServer) -> Histogram:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    found: Histogram = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LAG}_count":
                found["count"] = sample.value
            elif sample.name == f"{LAG}_sum":
                found["sum"] = sample.value
            elif sample.name == f"{LAG}_bucket":
                found[f"le={float(sample.labels['le'])}"] = sample.value
    return found


async def scrape_until(server: SmsServer, ready: Callable[[Histogram], bool]) -> Histogram:
    deadline = time.monotonic() + SCRAPE_PATIENCE_S
    while True:
        lag = await scrape_lag(server)
        if ready(lag) or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(LOOP_LAG_INTERVAL_S)


def above(lag: Histogram, bound: float) -> float:
    """Observations larger than a bucket's bound."""
    return lag["count"] - lag[f"le={bound}"]


async def metered(start_server: StartServer) -> SmsServer:
    return await start_server(make_config(server={"metrics_listen": "127.0.0.1:0"}))


async def test_the_loop_lag_is_exported_and_small_while_nothing_holds_the_loop(
    start_server: StartServer,
) -> None:
    server = await metered(start_server)
    lag = await scrape_until(server, lambda lag: lag.get("count", 0) >= 3)
    assert lag["count"] >= 3
    assert above(lag, BLOCK_BUCKET) == 0


async def test_a_loop_held_on_purpose_shows_as_one_lag_at_least_as_long(
    start_server: StartServer,
) -> None:
    server = await metered(start_server)
    before = await scrape_until(server, lambda lag: lag.get("count", 0) >= 1)
    # Holds the loop on purpose: server, monitor and test alike.
    time.sleep(BLOCK_S + LOOP_LAG_INTERVAL_S)  # noqa: ASYNC251
    after = await scrape_until(server, lambda lag: above(lag, BLOCK_BUCKET) >= 1)
    assert above(after, BLOCK_BUCKET) - above(before, BLOCK_BUCKET) == 1
    assert after["sum"] - before["sum"] >= BLOCK_S


async def test_stopping_the_server_stops_the_monitor(start_server: StartServer) -> None:
    server = await metered(start_server)
    monitors = [task for task in asyncio.all_tasks() if task.get_name() == "loop-lag-monitor"]
    assert len(monitors) == 1
    await server.stop()
    assert monitors[0].done()
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "loop-lag-monitor"]


async def test_the_monitor_reports_how_late_it_woke() -> None:
    lags: list[float] = []
    monitor = LoopLagMonitor(lags.append, interval_s=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.1)  # noqa: ASYNC251 - the block the monitor must see
    await asyncio.sleep(0.05)
    await monitor.stop()
    assert max(lags) >= 0.1 - 0.01
    assert sorted(lags)[len(lags) // 2] < 0.01
