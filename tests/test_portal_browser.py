"""The portal as a person uses it, in headless Chromium: SAML login through the IdP's form, terms,
a key made and used with the openai SDK, usage on the page, revocation, logout; the same main
flow by keyboard alone, asserting where the focus lands after every step.

Every page state passes axe-core (WCAG 2.1 A and AA) and the layout check at 1366 and 390 px
(and at 320 px: no sideways scrolling); screenshots go to the test's folder and to
.screenshots-review/ for a person to look at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from llmgateway.auth.keys import KEY_PATTERN
from tests.browser import DESKTOP, NARROW, PHONE, check_page, check_widths, chromium, focused, layout_faults, new_page
from tests.conftest import GatewayProcess, model_toml, wait_for
from tests.idp import LoopbackIdP

HELLO = [{"role": "user", "content": "Hello"}]
DEV_PORTAL = '[portal]\nenabled = true\ndev_login = true\nterms_version = "2026-11"\ncurrency = "EUR"\n'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    problems: list[str] = []
    tab = new_page(browser, problems)
    yield tab
    tab.context.close()
    assert problems == [], "a script failed, the CSP refused something, or a name typed by a person opened a dialog"


def log_in(page: Page, gw: GatewayProcess, idp: LoopbackIdP, username: str) -> None:
    page.goto(gw.url + "/portal")
    page.wait_for_url(idp.url + "/sso?*")
    page.fill("#username", username)
    page.fill("#password", "secret")
    page.click("#login")


def y_ticks(page: Page) -> list[float]:
    """The chart's y-axis labels, bottom first."""
    labels = page.locator("#chart svg text.y").all_text_contents()
    return [float(t.replace(",", "")) for t in labels]


def assert_round_ticks(ticks: list[float]) -> None:
    steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
    assert ticks[0] == 0 and len(steps) == 1, ticks
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert mantissa in (1, 2, 2.5, 5), f"ticks {ticks} are not round"


def last_label_fits(page: Page) -> bool:
    return page.evaluate("""() => {
      const svg = document.querySelector("#chart svg");
      const width = svg.viewBox.baseVal.width;
      return [...svg.querySelectorAll("text.x")].every((t) => {
        const box = t.getBBox();
        return box.x >= 0 && box.x + box.width <= width + 0.5;
      });
    }""")


def test_a_person_gets_uses_and_revokes_a_key(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                              tmp_path: Path) -> None:
    gw = saml_gw
    favicon = requests.get(gw.url + "/favicon.ico", timeout=10)
    assert favicon.status_code == 200 and favicon.headers["Content-Type"].startswith("image/svg+xml")
    log_in(page, gw, idp, "alice@example.edu")
    page.wait_for_url(gw.url + "/portal")
    expect(page.locator("#view-terms")).to_be_visible()
    expect(page.locator("#who")).to_have_text("Test Alice")
    expect(page.locator("#nav")).to_be_hidden()
    expect(page).to_have_title("Terms of use · LLM Gateway")
    check_widths(page, tmp_path, "1-terms")

    page.check("#terms-check")
    page.click("#terms-form button")
    expect(page.locator("#view-keys")).to_be_visible()
    expect(page.locator("#no-keys")).to_be_visible()
    expect(page.locator("#keys-table")).to_be_hidden()
    expect(page.locator("nav a[aria-current=page]")).to_have_text("My keys")
    expect(page).to_have_title("My keys · LLM Gateway")
    legend, fieldset = page.locator("#create-form legend"), page.locator("#create-form fieldset")
    assert legend.bounding_box()["y"] >= fieldset.bounding_box()["y"], "the legend sits on the fieldset's border"
    check_widths(page, tmp_path, "2-keys-empty")

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
    expect(page.locator("#copied")).to_have_text("Copied.")
    expect(page.locator("#keys-body [data-label=Name]")).to_have_text(name)
    expect(page.locator("#keys-body td[data-label=Models]")).to_have_text("test-model")
    assert page.locator("#keys-body script, #keys-body b").count() == 0
    check_widths(page, tmp_path, "3-new-key-shown-once")

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
    expect(page.locator("#chart svg rect[stroke]")).to_have_count(1)
    expect(page).to_have_title("My usage · LLM Gateway")
    total = page.locator("#totals-body tr.total :is(td, th)")
    expect(total.nth(0)).to_have_text("Total")
    expect(total.nth(1)).to_have_text("1")
    expect(page.locator("#totals-body th[data-label=Model]").first).to_have_text("test-model")
    expect(page.locator("#totals-body td[data-label=Cost]").first).to_have_text("0.00")
    assert_round_ticks(y_ticks(page))
    assert page.locator("#chart svg text.x").count() >= 7, "one day of usage is drawn in a week, not alone at the edge"
    assert "test-model" in page.get_attribute("#chart svg", "aria-label") or \
        "tokens in all" in page.get_attribute("#chart svg", "aria-label")
    page.click("#per-day summary")
    expect(page.locator("#per-day-body [data-label=Model]")).to_have_text("test-model")
    check_widths(page, tmp_path, "4-usage")

    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.locator("#chart svg")).to_be_visible()
    assert last_label_fits(page), "an x-axis label is cut off at the chart's edge"
    assert "Model" not in page.inner_text("#totals-body tr.total"), "the total reads 'Model: Total'"
    page.set_viewport_size(NARROW)
    expect(page.locator("#chart svg")).to_be_visible()
    assert last_label_fits(page)
    page.set_viewport_size(DESKTOP)
    page.click("nav a[data-view=keys]")
    expect(page.locator("#view-keys")).to_be_visible()
    expect(page.locator("#keys-table")).to_be_visible()
    check_widths(page, tmp_path, "5-keys-one")

    page.click("#keys-body button.danger")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text(name)
    expect(page.get_by_role("dialog", name="Revoke this key?")).to_be_visible()
    check_page(page, tmp_path, "6-revoke-confirmation")
    page.click("#confirm-revoke")
    expect(page.locator("#keys-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#keys-body button.danger")).to_have_count(0)
    expect(page.locator("#announce")).to_contain_text("is revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="test-model", messages=HELLO)
    check_widths(page, tmp_path, "7-keys-revoked")

    session = next(c["value"] for c in page.context.cookies() if c["name"] == "llmgw_session")
    page.click("#logout")
    page.wait_for_url(gw.url + "/portal/logged-out")
    expect(page.locator("h1")).to_have_text("You are logged out")
    check_widths(page, tmp_path, "8-logged-out")
    assert idp.logouts, "the IdP was not asked to end its session"
    assert not any(c["name"] == "llmgw_session" for c in page.context.cookies())
    stolen = requests.get(gw.url + "/portal/api/me", cookies={"llmgw_session": session}, timeout=10)
    assert stolen.status_code == 401


def test_many_keys_and_much_usage_fit_every_width(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                                  tmp_path: Path) -> None:
    """Many rows: nine keys with long names, calls on two models; the usage's totals and table."""
    gw = saml_gw
    log_in(page, gw, idp, "alice@example.edu")
    page.wait_for_url(gw.url + "/portal")
    page.check("#terms-check")
    page.click("#terms-form button")
    keys = []
    for i in range(9):
        page.fill("#key-name", f"a-rather-long-key-name-for-the-notebook-{i}-of-the-thesis-project")
        page.click("#create-button")
        expect(page.locator("#new-key")).to_be_visible()
        keys.append(page.inner_text("#new-key-value"))
        page.click("#new-key-done")
    for i, key in enumerate(keys):
        for _ in range(1 + i % 3):
            gw.client(key).chat.completions.create(model=["test-model", "other-model"][i % 2], messages=HELLO)
    wait_for(lambda: page.request.get(gw.url + "/portal/api/usage").json()["totals"]["requests"] >= 18,
             what="the calls' usage")
    expect(page.locator("#keys-body tr")).to_have_count(9)
    check_widths(page, tmp_path, "keys-many")
    page.click("nav a[data-view=usage]")
    expect(page.locator("#legend .legend-item")).to_have_count(2)
    page.click("#per-day summary")
    check_widths(page, tmp_path, "usage-many")
    assert_round_ticks(y_ticks(page))


def test_an_ineligible_person_is_told_why(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                          tmp_path: Path) -> None:
    log_in(page, saml_gw, idp, "sam@example.edu")
    page.wait_for_url(saml_gw.url + "/saml/acs")
    expect(page.locator("h1")).to_have_text("You cannot use this service")
    expect(page.locator(".message")).to_contain_text("employee or faculty")
    check_widths(page, tmp_path, "ineligible")
    assert not any(c["name"] == "llmgw_session" for c in page.context.cookies())


def test_development_login_is_marked_on_every_page(page: Page, start_gateway: Callable[..., GatewayProcess],
                                                   tmp_path: Path) -> None:
    gw = start_gateway(model_toml("test-model", ["http://127.0.0.1:9"]), extra=DEV_PORTAL)
    page.goto(gw.url + "/portal")
    page.wait_for_url(gw.url + "/portal/dev-login?next=%2Fportal")
    expect(page.locator(".dev-banner")).to_be_visible()
    check_widths(page, tmp_path, "dev-login")
    page.fill("input[name=username]", "dev-person")
    page.click("button[type=submit]")
    page.wait_for_url(gw.url + "/portal")
    expect(page.locator("#dev-banner")).to_be_visible()
    expect(page.locator("#terms-version")).to_have_text("2026-11")
    check_page(page, tmp_path, "dev-portal-terms")
    page.check("#terms-check")
    page.click("#terms-form button")
    page.click("nav a[data-view=usage]")
    expect(page.locator("#chart")).to_contain_text("No usage in the last 30 days yet.")
    expect(page.locator("#view-usage th.cost-head").last).to_have_text("Cost (EUR)")
    expect(page.locator("#totals-body tr.total td[data-label=Cost]")).to_have_text("0.00 EUR")
    check_widths(page, tmp_path, "dev-usage-empty")
    page.goto(gw.url + "/portal/logout")
    expect(page.locator("h1")).to_have_text("Log out")
    page.click("#logout-confirm")
    expect(page.locator(".dev-banner")).to_be_visible()
    expect(page.locator("h1")).to_have_text("You are logged out")


def press_until(page: Page, key: str, target: str, most: int) -> int:
    """Press `key` until `target` (a selector) has the focus; how many presses it took."""
    for presses in range(1, most + 1):
        page.keyboard.press(key)
        if page.evaluate("s => document.activeElement.matches(s)", target):
            return presses
    raise AssertionError(f"{target} not reached with {most} x {key}; the focus is on {focused(page)}")


def test_the_main_flow_by_keyboard_alone(page: Page, start_gateway: Callable[..., GatewayProcess],
                                         tmp_path: Path) -> None:
    """Log in, accept the terms, create a key, copy it, close it, revoke it: Tab, Space and Enter only,
    the focus where attention must go after each step, and each result announced."""
    gw = start_gateway(model_toml("test-model", ["http://127.0.0.1:9"]), extra=DEV_PORTAL)
    page.goto(gw.url + "/portal")
    page.wait_for_url(gw.url + "/portal/dev-login?next=%2Fportal")
    expect(page.locator("input[name=username]"), "the username field has the focus").to_be_focused()
    page.keyboard.type("keyboard-person")
    page.keyboard.press("Enter")
    page.wait_for_url(gw.url + "/portal")
    expect(page.locator("#view-terms")).to_be_visible()

    assert press_until(page, "Tab", "#skip", 1) == 1, "the skip link comes first"
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    press_until(page, "Tab", "#terms-check", 3)
    page.keyboard.press("Space")
    press_until(page, "Tab", "#terms-form button", 1)
    page.keyboard.press("Enter")
    expect(page.locator("#view-keys")).to_be_visible()
    expect(page.locator("#keys-title")).to_be_focused()
    expect(page.locator("#announce")).to_have_text("Terms accepted.")

    press_until(page, "Tab", "#key-name", 2)
    page.keyboard.type("by keyboard")
    page.keyboard.press("Enter")
    expect(page.locator("#new-key-title")).to_be_focused()
    expect(page.locator("#announce")).to_contain_text("Your new key")
    assert re.match(KEY_PATTERN, page.inner_text("#new-key-value"))
    assert press_until(page, "Tab", "#copy-key", 1) == 1, "Copy is one Tab from the new key's heading"
    page.keyboard.press("Enter")
    expect(page.locator("#copied")).to_have_text("Copied.")
    press_until(page, "Tab", "#new-key-done", 2)
    page.keyboard.press("Enter")
    expect(page.locator("#new-key")).to_be_hidden()
    expect(page.locator("#keys-title")).to_be_focused()

    press_until(page, "Tab", "#keys-body button", 1)
    expect(page.locator("#keys-body button")).to_have_accessible_name("Revoke the key “by keyboard”")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    press_until(page, "Tab", "#confirm-revoke", 2)
    check_page(page, tmp_path, "keyboard-revoke-dialog")
    page.keyboard.press("Enter")
    expect(page.locator("#keys-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#keys-title")).to_be_focused()
    expect(page.locator("#announce")).to_have_text("The key “by keyboard” is revoked.")

    press_until(page, "Shift+Tab", "nav a[data-view=usage]", 6)
    page.keyboard.press("Enter")
    expect(page.locator("#view-usage h1")).to_be_focused()
    expect(page.locator("nav a[data-view=usage]")).to_have_attribute("aria-current", "page")
    check_page(page, tmp_path, "keyboard-usage")
    assert not layout_faults(page)
