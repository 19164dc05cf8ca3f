"""The portal as a person uses it, in headless Chromium: SAML login through the IdP's form, terms,
a key made and used with the openai SDK, usage on the page, revocation, logout.

Screenshots of every page go to the test's folder and to .screenshots-review/ for a person to
look at. Playwright never downloads a browser: Debian's chromium is launched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from llmgateway.keys import KEY_PATTERN

from .conftest import ROOT, GatewayProcess, model_toml, wait_for
from .idp import LoopbackIdP

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REVIEW = ROOT / ".screenshots-review"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    alerts: list[str] = []
    tab.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()
    assert alerts == [], "a script (or a name typed by a person) opened a browser dialog"


def shoot(page: Page, folder: Path, name: str) -> None:
    """Save a full-page screenshot in the test's folder and copy it for review."""
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    REVIEW.mkdir(exist_ok=True)
    shutil.copy(path, REVIEW / path.name)


def log_in(page: Page, gw: GatewayProcess, idp: LoopbackIdP, username: str) -> None:
    page.goto(gw.url + "/portal")
    page.wait_for_url(idp.url + "/sso?*")
    page.fill("#username", username)
    page.fill("#password", "secret")
    page.click("#login")


def test_a_person_gets_uses_and_revokes_a_key(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                              tmp_path: Path) -> None:
    gw = saml_gw
    log_in(page, gw, idp, "alice@example.edu")
    page.wait_for_url(gw.url + "/portal")
    expect(page.locator("#view-terms")).to_be_visible()
    expect(page.locator("#who")).to_have_text("Test Alice")
    expect(page.locator("#nav")).to_be_hidden()
    shoot(page, tmp_path, "1-terms")

    page.check("#terms-check")
    page.click("#terms-form button")
    expect(page.locator("#view-keys")).to_be_visible()
    expect(page.locator("#no-keys")).to_be_visible()
    shoot(page, tmp_path, "2-keys-empty")

    name = '<script>alert("x")</script> <b>laptop</b>'
    page.fill("#key-name", name)
    page.check("#model-choices input[value='test-model']")
    page.select_option("#key-expiry", "30")
    page.click("#create-button")
    expect(page.locator("#new-key")).to_be_visible()
    key = page.inner_text("#new-key-value")
    assert KEY_PATTERN.match(key)
    assert key in page.inner_text("#example-curl") and key in page.inner_text("#example-python")
    assert f"{gw.url}/v1" in page.inner_text("#example-python")
    page.click("#copy-key")
    expect(page.locator("#copied")).to_be_visible()
    expect(page.locator("#keys-body td[data-label=Name]")).to_have_text(name)
    expect(page.locator("#keys-body td[data-label=Models]")).to_have_text("test-model")
    assert page.locator("#keys-body script, #keys-body b").count() == 0
    shoot(page, tmp_path, "3-new-key-shown-once")

    client = gw.client(key)
    reply = client.chat.completions.create(model="test-model", messages=HELLO)
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other-model", messages=HELLO)
    wait_for(lambda: page.request.get(gw.url + "/portal/api/usage").json()["totals"]["requests"] >= 1,
             what="the call's usage in the portal")

    page.click("#new-key-done")
    expect(page.locator("#new-key")).to_be_hidden()
    page.click("nav a[data-view=usage]")
    expect(page.locator("#chart svg rect")).to_have_count(1)
    total = page.locator("#totals-body tr.total td")
    expect(total.nth(0)).to_have_text("Total")
    expect(total.nth(1)).to_have_text("1")
    expect(page.locator("#totals-body td[data-label=Model]").first).to_have_text("test-model")
    shoot(page, tmp_path, "4-usage")

    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, tmp_path, "5-usage-phone")
    page.click("nav a[data-view=keys]")
    expect(page.locator("#view-keys")).to_be_visible()
    shoot(page, tmp_path, "6-keys-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways at phone width"
    page.set_viewport_size({"width": 1200, "height": 900})

    page.click("#keys-body button.danger")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text(name)
    shoot(page, tmp_path, "7-revoke-confirmation")
    page.click("#confirm-revoke")
    expect(page.locator("#keys-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#keys-body button.danger")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="test-model", messages=HELLO)
    shoot(page, tmp_path, "8-keys-revoked")

    session = next(c["value"] for c in page.context.cookies() if c["name"] == "llmgw_session")
    page.click("#logout")
    page.wait_for_url(gw.url + "/portal/logged-out")
    expect(page.locator("h1")).to_have_text("You are logged out")
    shoot(page, tmp_path, "9-logged-out")
    assert idp.logouts, "the IdP was not asked to end its session"
    assert not any(c["name"] == "llmgw_session" for c in page.context.cookies())
    stolen = requests.get(gw.url + "/portal/api/me", cookies={"llmgw_session": session}, timeout=10)
    assert stolen.status_code == 401


def test_an_ineligible_person_is_told_why(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                          tmp_path: Path) -> None:
    log_in(page, saml_gw, idp, "sam@example.edu")
    page.wait_for_url(saml_gw.url + "/saml/acs")
    expect(page.locator("h1")).to_have_text("You cannot use this service")
    expect(page.locator(".message")).to_contain_text("employee or faculty")
    shoot(page, tmp_path, "ineligible")
    assert not any(c["name"] == "llmgw_session" for c in page.context.cookies())


def test_development_login_is_marked_on_every_page(page: Page, start_gateway: Callable[..., GatewayProcess],
                                                   start_mock: Callable[..., object], tmp_path: Path) -> None:
    gw = start_gateway(model_toml("test-model", ["http://127.0.0.1:9"]),
                       extra="[portal]\nenabled = true\ndev_login = true\nterms_version = \"2026-11\"\n")
    page.goto(gw.url + "/portal")
    page.wait_for_url(gw.url + "/portal/dev-login?next=%2Fportal")
    expect(page.locator(".dev-banner")).to_be_visible()
    shoot(page, tmp_path, "dev-login")
    page.fill("input[name=username]", "dev-person")
    page.click("button[type=submit]")
    page.wait_for_url(gw.url + "/portal")
    expect(page.locator("#dev-banner")).to_be_visible()
    expect(page.locator("#terms-version")).to_have_text("2026-11")
    shoot(page, tmp_path, "dev-portal-terms")
    page.goto(gw.url + "/portal/logout")
    expect(page.locator("h1")).to_have_text("Log out")
    page.click("#logout-confirm")
    expect(page.locator(".dev-banner")).to_be_visible()
    expect(page.locator("h1")).to_have_text("You are logged out")
