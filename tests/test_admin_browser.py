"""The admin UI as an admin uses it, in headless Chromium: SAML login through the IdP as a member of
the admin group, a model added on the Models page and served to the openai SDK, a key made for
someone on the Keys page, used and then revoked (the SDK gets 401), a user's limits and role
changed, usage, the audit log, admin tokens; and the refusal of a person who is not an admin.

Every page state passes axe-core (WCAG 2.1 A and AA) and the layout check at 1366 and 390 px (and
at 320 px: no sideways scrolling); the faults a person once found on these pages are checked
where a test can see them. Screenshots go to the test's folder and to .screenshots-review/admin/
for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote

import openai
import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect

from llmgateway.auth.keys import KEY_PATTERN
from tests.browser import DESKTOP, PHONE, chromium, layout_faults, new_page, text_lines
from tests.conftest import GatewayProcess, MockUpstream, model_toml, wait_for
from tests.idp import LoopbackIdP

from . import browser as shared

REVIEW = shared.REVIEW / "admin"
HELLO = [{"role": "user", "content": "Hello"}]
API = "/admin/api/v1"
ADMIN = "root@example.edu"
PERSON = "alice@example.edu"
NEW_MODEL = "team/llama-new"
KEY_NAME = '<img src=x onerror=alert(1)> "notebook"'
CALLS = 25


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab that fails the test on a browser dialog (alert/confirm), an uncaught script error or a
    Content-Security-Policy violation: the page must work under `default-src 'self'`."""
    problems: list[str] = []
    tab = new_page(browser, problems)
    yield tab
    tab.context.close()
    assert problems == []


def shoot(page: Page, folder: Path, name: str) -> None:
    """The checks of every page state at desktop and phone width, with their screenshots."""
    shared.check_widths(page, folder, name, REVIEW)


def check(page: Page, folder: Path, name: str) -> None:
    """The checks of one page state at the current width, with its screenshot."""
    shared.check_page(page, folder, name, REVIEW)


def log_in(page: Page, gw: GatewayProcess, idp: LoopbackIdP, username: str, path: str = "/admin") -> None:
    page.goto(gw.url + path)
    page.wait_for_url(idp.url + "/sso?*")
    page.fill("#username", username)
    page.fill("#password", "secret")
    page.click("#login")
    page.wait_for_url(gw.url + path)


def open_view(page: Page, hash_: str, ready: str) -> None:
    """Go to a view by its hash and wait until `ready` (a selector) shows."""
    page.evaluate("h => { window.location.hash = h; }", hash_)
    expect(page.locator(ready).first).to_be_visible()


def api(page: Page, gw: GatewayProcess, method: str, path: str, body: object = None) -> requests.Response:
    """The admin API with the browser's session, as the page's script calls it."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return requests.request(method, gw.url + API + path, json=body, cookies=cookies, timeout=10,
                            headers={"X-XSRFToken": cookies.get("_xsrf", "")})


def model_line(page: Page, model_id: str) -> Locator:
    """The Models page's row of one model."""
    return page.locator("#models-body tr", has=page.locator(f"td[data-label=Model] span:text-is('{model_id}')"))


def model_ids(client: openai.OpenAI) -> list[str]:
    return [m.id for m in client.models.list()]


def test_an_admin_runs_the_gateway_from_the_browser(page: Page, browser: Browser, saml_gw: GatewayProcess,
                                                    idp: LoopbackIdP, start_mock: Callable[..., MockUpstream],
                                                    tmp_path: Path) -> None:
    gw = saml_gw
    upstream = start_mock()
    # A person logs in to the portal once, so there is someone to manage besides the admin.
    other = browser.new_context()
    log_in(other.new_page(), gw, idp, PERSON, "/portal")
    other.close()

    log_in(page, gw, idp, ADMIN)
    expect(page.locator("#who")).to_have_text("Test Root")
    expect(page.locator("#dev-banner")).to_be_hidden()
    expect(page.locator("#view-users")).to_be_visible()

    see_and_filter_the_users(page, tmp_path)
    change_a_person(page, gw, tmp_path)
    add_a_model(page, upstream, tmp_path)
    client = make_and_use_a_key(page, gw, upstream, tmp_path)
    page_through_keys(page, gw)
    read_the_usage(page, gw, tmp_path)
    restrict_the_key(page, gw, client, tmp_path)
    key_id = revoke_the_key(page, client, tmp_path)
    read_the_audit_log(page, gw, key_id, tmp_path)
    make_and_revoke_a_token(page, gw, tmp_path)
    every_page_with_many_rows(page, key_id, tmp_path)
    remove_the_model(page, gw)


def see_and_filter_the_users(page: Page, tmp_path: Path) -> None:
    """The users list: both people, the admin marked; a search kept in the URL; an empty result explained."""
    expect(page.locator("#users-body tr")).to_have_count(2)
    admin_row = page.locator("#users-body tr", has_text=ADMIN)
    expect(admin_row.locator(".badge.admin")).to_be_visible()
    expect(admin_row.locator("td[data-label=Role]")).to_contain_text("by the IdP")
    expect(page.locator("#users-pager .count")).to_have_text("1–2 of 2")
    shoot(page, tmp_path, "users")

    page.fill("#users-filter input[name=search]", "alice")
    page.click("#users-filter button[type=submit]")
    expect(page.locator("#users-body tr")).to_have_count(1)
    assert "search=alice" in page.url, "the filter is not kept in the URL"
    page.reload()
    expect(page.locator("#users-filter input[name=search]")).to_have_value("alice")
    expect(page.locator("#users-body tr")).to_have_count(1)
    page.select_option("#users-filter select[name=role]", "admin")
    expect(page.locator("#users-empty")).to_have_text("No users match these filters.")
    page.select_option("#users-filter select[name=role]", "")
    page.click(f"#users-body a:text-is('{PERSON}')")


def change_a_person(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """One person's page: limit overrides saved, the admin role granted and removed, disabled and
    enabled again (each confirmed first)."""
    expect(page.locator("#view-user")).to_be_visible()
    expect(page.locator("#user-title")).to_have_text(f"Test Alice ({PERSON})")
    page.fill("#user-limits input[data-limit=requests_per_minute]", "100")
    page.fill("#user-limits input[data-limit=cost_per_day]", "2.5")
    page.click("#user-limits button[type=submit]")
    expect(page.locator("#user-limits-saved")).to_be_visible()
    assert api(page, gw, "GET", f"/users/{quote(PERSON)}").json()["limits"] == \
        {"requests_per_minute": 100, "cost_per_day": 2.5}
    page.reload()
    expect(page.locator("#user-quota")).to_contain_text("2.50")
    expect(page.locator("#user-limits input[data-limit=requests_per_minute]")).to_have_value("100")

    page.click("#user-admin")
    expect(page.locator("#confirm-text")).to_contain_text(f"Make {PERSON} an admin")
    page.click("#confirm-ok")
    expect(page.locator("#user-facts")).to_contain_text("granted here")
    expect(page.locator("#user-admin")).to_have_text("Remove admin role")
    page.click("#user-admin")
    page.click("#confirm-ok")
    expect(page.locator("#user-admin")).to_have_text("Grant admin role")
    page.click("#user-disable")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-cancel")
    expect(page.locator("#user-facts")).not_to_contain_text("disabled")
    page.click("#user-disable")
    page.click("#confirm-ok")
    expect(page.locator("#user-facts .badge.off")).to_have_text("disabled")
    expect(page.locator("#user-disable")).to_have_text("Enable")
    page.click("#user-disable")
    page.click("#confirm-ok")
    expect(page.locator("#user-disable")).to_have_text("Disable")
    expect(page.locator("#user-keys-empty")).to_be_visible()
    shoot(page, tmp_path, "user-detail")


def add_a_model(page: Page, upstream: MockUpstream, tmp_path: Path) -> None:
    """Config models are read-only and show their upstream's health; a taken id is refused in place; an API
    model is added, then changed."""
    page.click("nav a[data-view=models]")
    for config_model in ("test-model", "other-model"):
        model_row = model_line(page, config_model)
        expect(model_row.locator("td[data-label=Source]")).to_have_text("from config file")
        expect(model_row.locator("a, button")).to_have_count(0)
        expect(model_row.locator(".badge.health")).to_have_text("healthy")
        expect(model_row.locator("td[data-label=Upstreams]")).to_contain_text("last check passed (HTTP 200)")
    expect(page.locator("#model-form input[name=usage_probe]")).to_be_checked()
    expect(page.locator("#model-form textarea[name=upstreams]")).not_to_have_attribute("placeholder", re.compile("/v1"))
    page.fill("#model-form input[name=id]", NEW_MODEL)
    page.fill("#model-form textarea[name=upstreams]", upstream.url + "/v1")
    page.click("#model-submit")
    expect(page.locator("#model-form .form-error")).to_contain_text("ends in /v1")
    expect(page.locator("#model-form textarea[name=upstreams]")).to_be_focused()
    check(page, tmp_path, "model-form-refused")
    page.fill("#model-form input[name=id]", "test-model")
    page.fill("#model-form textarea[name=upstreams]", upstream.url)
    page.click("#model-submit")
    expect(page.locator("#model-form .form-error")).to_contain_text("configuration file")
    expect(page.locator("#model-form input[name=id]")).to_have_class("invalid")
    page.fill("#model-form input[name=id]", NEW_MODEL)
    page.fill("#model-form textarea[name=upstreams]", "http://169.254.169.254/latest")
    page.click("#model-submit")
    expect(page.locator("#model-form .form-error")).to_contain_text("cloud metadata address")
    expect(page.locator("#model-form textarea[name=upstreams]")).to_have_class("invalid")
    page.fill("#model-form textarea[name=upstreams]", upstream.url)
    page.fill("#model-form input[name=prompt_cost_per_1k]", "0.5")
    page.fill("#model-form input[name=completion_cost_per_1k]", "1")
    page.click("#model-submit")
    new_row = model_line(page, NEW_MODEL)
    expect(new_row.locator("td[data-label=Source]")).to_have_text("added here")
    expect(page.locator("#model-form .form-error")).to_be_hidden()
    new_row.locator("a", has_text="Edit").click()
    expect(page.locator("#model-form-title")).to_have_text(f"Change the model {NEW_MODEL}")
    expect(page.locator("#model-form textarea[name=upstreams]")).to_have_value(upstream.url)
    page.fill("#model-form input[name=completion_cost_per_1k]", "2")
    page.click("#model-submit")
    expect(page.locator("#model-form-title")).to_have_text("Add a model")
    expect(new_row.locator("td[data-label='Price / 1k']")).to_have_text("0.50 / 2.00")
    assert text_lines(new_row.locator(".upstream")) == 1, "the upstream URL wraps at desktop width"
    shoot(page, tmp_path, "models")


def make_and_use_a_key(page: Page, gw: GatewayProcess, upstream: MockUpstream, tmp_path: Path) -> openai.OpenAI:
    """A key made for a person, shown once; the openai SDK sees the new model within seconds and uses it."""
    page.click("nav a[data-view=keys]")
    page.click("#key-create-card summary")
    page.fill("#key-create input[name=user]", PERSON)
    page.fill("#key-create input[name=name]", KEY_NAME)
    expect(page.locator(f"#key-create .model-choices input[value='{NEW_MODEL}']")).to_be_attached()
    page.click("#key-create button[type=submit]")
    expect(page.locator("#new-key")).to_be_visible()
    expect(page.locator("#new-key-title")).to_be_focused()
    key = page.inner_text("#new-key-value")
    assert KEY_PATTERN.match(key)
    assert key in page.inner_text("#example-python") and f"{gw.url}/v1" in page.inner_text("#example-python")
    page.click("#copy-key")
    expect(page.locator("#copied")).to_have_text("Copied.")
    expect(page.locator("#copied")).to_have_attribute("role", "status")
    expect(page.locator("#keys-filter input[name=user]")).to_have_value(PERSON)
    check(page, tmp_path, "new-key")
    fonts = "el => { const s = getComputedStyle(el); return [s.fontFamily, s.fontSize]; }"
    assert page.locator("#keys-body td[data-label=Owner] a").evaluate(fonts) == \
        page.locator("#keys-body td[data-label=Name] a").evaluate(fonts), "Owner and Name in different fonts"
    expect(page.locator("#keys-body td[data-label=Name]")).to_have_text(KEY_NAME)
    assert page.locator("#keys-body img").count() == 0

    client = gw.client(key)
    wait_for(lambda: NEW_MODEL in model_ids(client), timeout=10, what="the new model in GET /v1/models")
    reply = client.chat.completions.create(model=NEW_MODEL, messages=HELLO)
    assert reply.choices[0].message.content
    assert upstream.requests()[-1]["body"]["model"] == NEW_MODEL
    for _ in range(CALLS - 1):  # small calls: alice's cost budget (2.50 a day) must hold them all
        client.chat.completions.create(model=NEW_MODEL, messages=HELLO, max_tokens=16)
    page.click("#new-key-done")
    expect(page.locator("#new-key")).to_be_hidden()
    expect(page.locator("#keys-title")).to_be_focused()
    shoot(page, tmp_path, "keys")
    return client


def page_through_keys(page: Page, gw: GatewayProcess) -> None:
    """Lists are paged by the server: 60 more keys, 50 a page; the page is kept in the URL."""
    for i in range(60):
        assert api(page, gw, "POST", "/keys", {"user": "bulk@example.edu", "name": f"bulk {i:02d}"}).status_code == 201
    open_view(page, "#keys", "#keys-body tr")
    expect(page.locator("#keys-pager .count")).to_have_text("1–50 of 61")
    expect(page.locator("#keys-body tr")).to_have_count(50)
    page.click("#keys-pager .next")
    expect(page.locator("#keys-pager .count")).to_have_text("51–61 of 61")
    expect(page.locator("#keys-pager .next")).to_be_disabled()
    page.reload()
    expect(page.locator("#keys-pager .count")).to_have_text("51–61 of 61")
    expect(page.locator("#keys-body tr")).to_have_count(11)


def read_the_usage(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """The call shows in the totals, the day chart, the model bars and the top users; the CSV link works."""
    wait_for(lambda: api(page, gw, "GET", "/usage?by=model").json()["totals"]["requests"] >= CALLS,
             what="the calls in the usage report")
    page.click("nav a[data-view=usage]")
    expect(page.locator("#usage-totals .tile[data-label=Requests] .value")).to_have_text(str(CALLS))
    expect(page.locator("#usage-day-chart svg g rect")).to_have_count(2)
    expect(page.locator("#usage-users-title")).to_have_text("Top users by cost")
    for field in page.locator("#view-usage input[name=since], #view-usage input[name=until]").all():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", field.input_value()), "dates are shown as ISO dates"
    page.click("#usage-per-day summary")
    expect(page.locator("#usage-per-day-body td[data-label=Requests]")).to_have_text(str(CALLS))
    assert "The numbers per day" in page.get_attribute("#usage-day-chart svg", "aria-label") or \
        "table below" in page.get_attribute("#usage-day-chart svg", "aria-label")
    expect(page.locator(f"#usage-models .bar-row[data-model='{NEW_MODEL}']")).to_be_visible()
    expect(page.locator("#usage-users-body td[data-label=User]")).to_have_text(PERSON)
    csv = requests.get(page.get_attribute("#csv-model", "href"), timeout=10,
                       cookies={c["name"]: c["value"] for c in page.context.cookies()})
    assert csv.status_code == 200 and NEW_MODEL in csv.text
    assert "$" not in page.inner_text("#view-usage")
    shoot(page, tmp_path, "usage")


def restrict_the_key(page: Page, gw: GatewayProcess, client: openai.OpenAI, tmp_path: Path) -> None:
    """The key changed on its own page: only the new model from now on, no expiry, a limit of its own."""
    open_view(page, f"#keys?user={quote(PERSON)}", "#keys-body tr")
    expect(page.locator("#keys-body tr")).to_have_count(1)
    page.click("#keys-body td[data-label=Name] a")
    expect(page.locator("#key-title")).to_have_text(f"Key “{KEY_NAME}”")
    key_id = page.inner_text("#key-facts code >> nth=1")
    expires = api(page, gw, "GET", f"/keys/{key_id}").json()["expires"]
    assert expires % 86400 != 0, "a key made in the UI expires at the time of day it was made"
    page.fill("#key-edit input[data-limit=tokens_per_minute]", "100000")
    page.click("#key-edit button[type=submit]")
    expect(page.locator("#key-saved")).to_have_text("Saved.")
    assert api(page, gw, "GET", f"/keys/{key_id}").json()["expires"] == expires, "saving moved the expiry"
    day = page.input_value("#key-edit input[name=expires]")
    later = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    page.fill("#key-edit input[name=expires]", later)
    page.click("#key-edit button[type=submit]")
    expect(page.locator("#key-saved")).to_have_text("Saved.")
    assert api(page, gw, "GET", f"/keys/{key_id}").json()["expires"] == pytest.approx(expires + 86400), \
        "a new day keeps the time of day"
    page.check(f"#key-edit .model-choices input[value='{NEW_MODEL}']")
    page.check("#key-edit input[name=never]")
    page.fill("#key-edit input[data-limit=requests_per_minute]", "30")
    page.click("#key-edit button[type=submit]")
    expect(page.locator("#key-saved")).to_have_text("Saved.")
    expect(page.locator("#key-edit button[type=submit]")).to_be_focused()
    expect(page.locator("#key-facts")).to_contain_text("Requests per minute: 30")
    expect(page.locator("#key-facts")).to_contain_text("never")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="test-model", messages=HELLO)
    shoot(page, tmp_path, "key-detail")


def revoke_the_key(page: Page, client: openai.OpenAI, tmp_path: Path) -> str:
    """Revoked on the Keys page (confirmed): the SDK is refused at once. Returns the key's id."""
    page.click("#view-key .back a")
    expect(page.locator("#keys-body tr")).to_have_count(1)
    expect(page.locator("#keys-body td[data-label=Models]")).to_have_text(NEW_MODEL)
    expect(page.locator("#keys-body button.revoke")).to_have_accessible_name(f"Revoke the key “{KEY_NAME}”")
    page.click("#keys-body button.revoke")
    expect(page.locator("#confirm-text")).to_contain_text(KEY_NAME)
    expect(page.get_by_role("dialog", name="Revoke the key?")).to_be_visible()
    check(page, tmp_path, "revoke-dialog")
    page.click("#confirm-ok")
    expect(page.locator("#keys-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#keys-body button.revoke")).to_have_count(0)
    expect(page.locator("#keys-title")).to_be_focused()
    expect(page.locator("#announce")).to_have_text(f"The key “{KEY_NAME}” is revoked.")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=NEW_MODEL, messages=HELLO)

    # The key's page, and its usage events.
    page.click("#keys-body td[data-label=Name] a")
    expect(page.locator("#key-facts")).to_contain_text("revoked")
    expect(page.locator("#key-revoke")).to_be_hidden()
    key_id = page.inner_text("#key-facts code >> nth=1")
    page.click("#key-events-link")
    expect(page.locator("#events-body tr")).to_have_count(CALLS)
    expect(page.locator("#events-body td[data-label=Model]").first).to_have_text(NEW_MODEL)
    shoot(page, tmp_path, "events")
    page.set_viewport_size(PHONE)
    rows = page.locator("#events-body tr")
    per_event = (rows.last.bounding_box()["y"] - rows.first.bounding_box()["y"]) / (CALLS - 1)
    page.set_viewport_size(DESKTOP)
    assert per_event < 170, f"each usage event takes {per_event:.0f} px of a phone's page"

    # Every event, of everyone: no subject to name or go back to, one tab marked.
    open_view(page, "#events", "#events-body tr")
    expect(page.locator("#events-title")).to_have_text("Usage events of everyone")
    expect(page.locator("#events-back")).to_be_hidden()
    expect(page.locator("nav a[aria-current=page]")).to_have_count(1)
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Usage")
    assert text_lines(page.locator("#events-body td[data-label=Model]").first) == 1, "the model name wraps"
    shoot(page, tmp_path, "events-everyone")
    return key_id


def read_the_audit_log(page: Page, gw: GatewayProcess, key_id: str, tmp_path: Path) -> None:
    """The newest entry is the revocation, by this admin through the UI; the model's entries by action prefix."""
    page.click("nav a[data-view=audit]")
    newest = page.locator("#audit-body tr").first
    expect(newest.locator("td[data-label=Action]")).to_have_text("key.revoke")
    expect(newest.locator("td[data-label=Target]")).to_have_text(key_id)
    expect(newest.locator("td[data-label=Through]")).to_have_text("admin UI")
    expect(newest.locator("td[data-label=Actor]")).to_contain_text(ADMIN)
    entries = api(page, gw, "GET", "/audit?limit=1").json()["total"]
    assert entries >= 70, "5 user changes, 2 model changes, 61 keys made, 1 changed, 1 revoked"
    expect(page.locator("#audit-pager .count")).to_have_text(f"1–50 of {entries}")
    details = page.inner_text("#audit-body")
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", details), "a raw epoch time in the audit log"
    assert not re.search(r": (;|$)", details, re.MULTILINE), "an empty value shown as nothing"
    shoot(page, tmp_path, "audit")
    page.fill("#audit-filter input[name=action]", "model.")
    page.click("#audit-filter button[type=submit]")
    expect(page.locator("#audit-body td[data-label=Action]")).to_have_text(["model.update", "model.create"])
    created = page.locator("#audit-body tr").last
    expect(created.locator("td[data-label=Target]")).to_have_text(NEW_MODEL)
    expect(created.locator("td[data-label=Actor]")).to_contain_text(ADMIN)
    page.fill("#audit-filter input[name=action]", "no.such.action")
    page.click("#audit-filter button[type=submit]")
    expect(page.locator("#audit-empty")).to_have_text("No entries match these filters.")


def make_and_revoke_a_token(page: Page, gw: GatewayProcess, tmp_path: Path) -> None:
    """An admin token, shown once, works on the admin API until it is revoked here."""
    page.click("nav a[data-view=tokens]")
    expect(page.locator("#tokens-empty")).to_be_visible()
    page.fill("#token-create input[name=name]", "nightly-report")
    page.click("#token-create button[type=submit]")
    expect(page.locator("#new-token")).to_be_visible()
    expect(page.locator("#new-token-title")).to_be_focused()
    token = page.inner_text("#new-token-value")
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(gw.url + API + "/users", headers=bearer, timeout=10).status_code == 200
    expect(page.locator("#tokens-body td[data-label=Name]")).to_have_text("nightly-report")
    shoot(page, tmp_path, "tokens")
    page.click("#new-token-done")
    expect(page.locator("#tokens-title")).to_be_focused()
    page.click("#tokens-body button.revoke")
    page.click("#confirm-ok")
    expect(page.locator("#tokens-body td[data-label=Status]")).to_have_text("revoked")
    expect(page.locator("#tokens-title")).to_be_focused()
    assert requests.get(gw.url + API + "/users", headers=bearer, timeout=10).status_code == 401


def every_page_with_many_rows(page: Page, key_id: str, tmp_path: Path) -> None:
    """Each page once everything has rows: the checks at every width."""
    for name, hash_, ready in [
        ("users", "#users", "#users-body tr"),
        ("user-detail", f"#user/{quote(PERSON)}", "#user-keys-body tr"),
        ("keys", "#keys", "#keys-body tr"),
        ("models", "#models", "#models-body tr"),
        ("usage", "#usage", "#usage-day-chart svg"),
        ("events", f"#events?key={key_id}", "#events-body tr"),
        ("audit", "#audit", "#audit-body tr"),
        ("tokens", "#tokens", "#tokens-body tr"),
    ]:
        open_view(page, hash_, ready)
        shoot(page, tmp_path, f"{name}-many")
        assert not layout_faults(page)


def remove_the_model(page: Page, gw: GatewayProcess) -> None:
    """The API model removed again (confirmed)."""
    open_view(page, "#models", "#models-body tr")
    model_line(page, NEW_MODEL).locator("button.remove").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"Remove the model {NEW_MODEL}?")
    page.click("#confirm-ok")
    expect(page.locator("#models-body tr")).to_have_count(2)
    assert NEW_MODEL not in [m["id"] for m in api(page, gw, "GET", "/models").json()["items"]]


def test_a_person_who_is_not_an_admin_is_refused(page: Page, saml_gw: GatewayProcess, idp: LoopbackIdP,
                                                 tmp_path: Path) -> None:
    gw = saml_gw
    anonymous = requests.get(gw.url + "/admin", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"] == "/saml/login?next=%2Fadmin"
    assert requests.get(gw.url + API + "/users", timeout=10).status_code == 401

    log_in(page, gw, idp, PERSON)
    expect(page.locator("h1")).to_have_text("Administrators only")
    assert page.locator("#view-users").count() == 0
    shoot(page, tmp_path, "refused")
    refused = api(page, gw, "GET", "/users")
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "You are not an administrator of this service."
    assert api(page, gw, "POST", "/tokens", {"name": "sneaky"}).status_code == 403


def test_the_development_login_is_marked_on_the_admin_page(page: Page, start_gateway: Callable[..., GatewayProcess],
                                                           tmp_path: Path) -> None:
    gw = start_gateway(model_toml("test-model", ["http://127.0.0.1:9"]),
                       extra="[portal]\nenabled = true\ndev_login = true\n")
    page.goto(gw.url + "/admin")
    page.wait_for_url(gw.url + "/portal/dev-login?next=%2Fadmin")
    page.fill("input[name=username]", "dev-admin")
    page.check("input[name=admin]")
    page.click("button[type=submit]")
    page.wait_for_url(gw.url + "/admin")
    expect(page.locator("#dev-banner")).to_be_visible()
    expect(page.locator("#who")).to_have_text("dev-admin")
    expect(page.locator("#users-body td[data-label=Username]")).to_have_text("dev-admin")
    shoot(page, tmp_path, "dev-login")
