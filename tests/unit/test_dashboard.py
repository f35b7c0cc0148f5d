"""The dashboard's static files: served from the package with their content types and a strict CSP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from anomaly_stream.serve import views
from anomaly_stream.settings import Settings


async def get(path: str) -> tuple[int, dict, bytes]:
    """GET `path` (sent as encoded) from the dashboard's routes and middleware on a bare aiohttp app."""
    app = web.Application(middlewares=[views.observe])
    app[views.API] = SimpleNamespace(queries_in_flight=0, settings=Settings())  # what the middleware reads
    app.router.add_get("/dashboard", lambda request: views.dashboard_file("index.html"))
    app.router.add_get("/dashboard/{name}", lambda request: views.dashboard_file(request.match_info["name"]))
    async with TestClient(TestServer(app)) as client:
        response = await client.get(URL(path, encoded=True))
        return response.status, response.headers, await response.read()


@pytest.mark.parametrize("path, content_type", [
    ("/dashboard", "text/html"),
    ("/dashboard/index.html", "text/html"),
    ("/dashboard/dashboard.js", "text/javascript"),
    ("/dashboard/dashboard.css", "text/css"),
    ("/dashboard/favicon.svg", "image/svg+xml"),
])
async def test_files_are_served_with_their_type_and_a_strict_csp(path, content_type):
    status, headers, body = await get(path)
    assert status == 200
    assert headers["Content-Type"] == f"{content_type}; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert len(body) > 100


async def test_the_page_loads_only_its_own_files():
    html = (await get("/dashboard"))[2].decode()
    for name in ("/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/favicon.svg"):
        assert name in html
    assert "<style" not in html and " style=" not in html and "onclick" not in html  # the CSP forbids inline
    assert "http://" not in html and "https://" not in html  # no CDN


async def test_the_script_never_parses_api_data_as_html():
    script = (await get("/dashboard/dashboard.js"))[2].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.parametrize("path", [
    "/dashboard/..%2Fviews.py",
    "/dashboard/%2e%2e%2fviews.py",
    "/dashboard/..%2F..%2Fsettings.py",
    "/dashboard/__init__.py",
    "/dashboard/missing.js",
])
async def test_nothing_outside_the_listed_files_is_served(path):
    status, headers, body = await get(path)
    assert status == 404
    assert "Content-Security-Policy" not in headers and b"import" not in body


@pytest.mark.parametrize("name", ["../views.py", "../../settings.py", "/etc/passwd", "", "."])
def test_names_outside_the_directory_are_refused(name):
    with pytest.raises(views.ApiError) as refused:
        views.dashboard_file(name)
    assert refused.value.status == 404
