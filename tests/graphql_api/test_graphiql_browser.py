"""GraphiQL in a real headless Chromium, with every request off this machine refused: the page loads,
runs a query with a token, and shows the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

from playwright.async_api import Route, async_playwright

from tests.support.api import running_api

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


async def test_graphiql_runs_a_query_with_a_token_without_any_public_cdn(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/system-deps (make test does)"
    async with running_api(tmp_path / "data") as api:
        token = await api.consumer("browser user")
        refused: list[str] = []

        async def only_this_service(route: Route) -> None:
            if route.request.url.startswith(api.url):
                await route.continue_()
            else:
                refused.append(route.request.url)
                await route.abort()

        query = "{ me { name } assets { id } }"
        headers = json.dumps({"Authorization": f"Bearer {token}"})
        url = f"{api.url}/graphql?q={quote(query)}&headers={quote(headers)}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page()
                await page.route("**/*", only_this_service)
                await page.goto(url)
                await page.click(".graphiql-execute-button", timeout=30_000)
                response = page.locator(".graphiql-response")
                await response.get_by_text("browser user").wait_for(timeout=30_000)
                text = await response.inner_text()
            finally:
                await browser.close()
    assert '"name": "browser user"' in text
    assert '"id": "dummy-job"' in text
    assert refused == [], f"the page tried to reach other hosts: {refused}"
