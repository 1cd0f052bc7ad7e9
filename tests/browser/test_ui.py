"""The chat web UI in a real browser against ``limner serve`` (sandbox providers, sandbox chat model).

Each test signs up its own user, so tests share the servers but not their data. Screenshots of the main
screens are saved to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable

from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, PHONE, LimnerServer, Visitor

IMAGE_ID = re.compile(r"img_[0-9A-Z]{26}")


def _png(color: tuple[int, int, int], size: int = 96) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def _image_id(locator_text: str | None) -> str:
    assert locator_text is not None
    found = IMAGE_ID.search(locator_text)
    assert found, locator_text
    return found.group(0)


def test_sign_up_sign_out_and_sign_in(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    response = page.goto(server.url + "/")
    expect(page).to_have_url(server.url + "/signin")  # signed-out visitors get the sign-in page
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    visitor.shot("signin")
    name = visitor.sign_up()
    expect(page.locator("#account-name")).to_have_text(name)
    expect(page.get_by_role("heading", name="What shall we make?")).to_be_visible()
    expect(page.locator("#sandbox-badge")).to_be_visible()
    visitor.shot("new-chat")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(server.url + "/signin")
    page.locator("#signin-name").fill(name)
    page.locator("#signin-password").fill("not the password")
    page.locator("#signin-password").press("Enter")
    expect(page.locator("#signin-error")).to_contain_text("Wrong name or password")
    page.locator("#signin-password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    visitor.wait_ready()
    expect(page.locator("#account-name")).to_have_text(name)


def test_picture_inline_and_in_the_panel_then_an_edit_with_its_parent(
    server: LimnerServer, visit: Callable[..., Visitor]
) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()

    visitor.composer.fill("Draw a lighthouse at dusk")
    visitor.composer.press("Shift+Enter")  # a new line, not a send
    visitor.composer.press_sequentially("in watercolour")
    expect(visitor.composer).to_have_value("Draw a lighthouse at dusk\nin watercolour")
    expect(page.locator(".message-user")).to_have_count(0)
    visitor.composer.press("Enter")

    card = page.locator(".tool-card").first
    expect(card).to_have_attribute("data-tool", "image_gen_oai")
    expect(card.locator(".tool-title")).to_have_text("Making a picture")
    inline = page.locator(".chat-image").first
    expect(inline.locator("img")).to_be_visible()
    visitor.answer_done()
    expect(card).to_have_class(re.compile("is-done"))
    expect(card).to_have_attribute("data-partials", "2")  # both partial images were shown while it ran
    first_id = inline.get_attribute("data-image-id")
    assert first_id and IMAGE_ID.fullmatch(first_id)
    natural_width = inline.locator("img").evaluate("img => img.naturalWidth")
    assert natural_width == 1024  # the bytes loaded through the authenticated content route

    panel_item = page.locator(f'.library-item[data-image-id="{first_id}"]')
    expect(panel_item).to_be_visible()
    expect(page.locator(".markdown .image-ref").first).to_have_text(first_id)
    expect(page.locator(".conversation-link[aria-current=page]")).to_contain_text("Draw a lighthouse")
    visitor.shot("chat-image")

    panel_item.hover()
    panel_item.get_by_role("button", name=f"Attach {first_id} to the next message").click()
    expect(page.locator(f'#attachments .attachment[data-image-id="{first_id}"]')).to_be_visible()
    visitor.composer.fill("make it blue")
    visitor.shot("composer-attachment")
    visitor.composer.press("Enter")

    expect(page.locator(".tool-card[data-tool=image_edit_oai]")).to_have_count(1)
    expect(page.locator(".message-user").nth(1).locator(".attachment-thumb")).to_have_count(1)
    edited = page.locator(".tool-card[data-tool=image_edit_oai] .chat-image")
    expect(edited).to_have_count(1)
    visitor.answer_done()
    expect(page.locator("#attachments .attachment")).to_have_count(0)
    edited_id = edited.get_attribute("data-image-id")
    assert edited_id and edited_id != first_id
    expect(page.locator(".library-item").first).to_have_attribute("data-image-id", edited_id)  # newest first

    edited.locator(".chat-image-open").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    lineage = viewer.locator(".lineage-item")
    expect(lineage).to_have_count(1)
    expect(lineage).to_have_attribute("data-image-id", first_id)
    expect(viewer.locator(".image-facts")).to_contain_text("gpt-image-1.5")
    expect(viewer.locator(".image-facts")).to_contain_text("Edited")
    expect(viewer.locator(".image-facts")).to_contain_text("1024 × 1024")
    expect(viewer.locator(".viewer-prompt").first).to_contain_text("make it blue")
    expect(viewer.get_by_role("link", name="Download")).to_have_attribute("href", f"/api/images/{edited_id}/content")
    expect(viewer.locator(".viewer-picture img")).to_be_visible()
    visitor.shot("viewer-lineage")

    lineage.get_by_role("button").click()  # follow the lineage to the parent
    expect(viewer.locator(".image-facts")).to_contain_text(first_id)
    expect(viewer.locator(".image-facts")).to_contain_text("Generated")
    viewer.get_by_role("button", name="Back").click()
    expect(viewer.locator(".image-facts")).to_contain_text(edited_id)
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    page.reload()  # the conversation comes back from the server, images and all
    visitor.wait_ready()
    expect(page.locator(".chat-image")).to_have_count(2)
    expect(page.locator(".message-user")).to_have_count(2)
    expect(page.locator("#chat-title")).to_contain_text("Draw a lighthouse")


def test_provider_error_shows_its_message_and_hint(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    visitor.send("Draw a cat on a sofa [[sandbox:moderation]]")
    failed = page.locator(".tool-card.is-failed")
    expect(failed).to_have_count(1)
    problem = failed.locator(".problem")
    expect(problem).to_have_attribute("role", "alert")
    expect(problem.locator(".problem-message")).to_contain_text("content policy")
    expect(problem.locator(".problem-hint")).to_contain_text("What to do: Rephrase the prompt")
    expect(problem.locator(".problem-details")).to_contain_text("content_policy")
    visitor.answer_done()
    expect(page.locator(".chat-image")).to_have_count(0)
    expect(page.locator(".library-item")).to_have_count(0)
    visitor.shot("provider-error")


def test_a_lost_connection_says_so_and_retries(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    page.route("**/api/conversations/*/messages", lambda route: route.abort("connectionreset"))
    visitor.send("Draw a red kite over hills")
    lost = page.locator(".problem-offline")
    expect(lost).to_contain_text("Connection lost")
    retry = lost.get_by_role("button", name="Try again")
    expect(retry).to_be_visible()
    visitor.shot("connection-lost")

    page.unroute("**/api/conversations/*/messages")
    retry.click()
    expect(page.locator(".problem-offline")).to_have_count(0)
    expect(page.locator(".message-user")).to_have_count(1)  # the retry replaced the failed attempt
    expect(page.locator(".chat-image")).to_have_count(1)
    visitor.answer_done()


def test_setting_a_key_lets_the_tool_run(keys_server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(keys_server)
    page = visitor.page
    visitor.sign_up()
    expect(page.locator("#sandbox-badge")).to_have_count(0)  # a configured provider: no image sandbox
    visitor.send("Draw a teapot")
    failed = page.locator(".tool-card.is-failed .problem")
    expect(failed.locator(".problem-message")).to_contain_text("No API key is configured for the OpenAI Image Tools")
    expect(failed.locator(".problem-hint")).to_contain_text("Settings")
    visitor.answer_done()

    page.get_by_role("button", name="Settings").click()
    dialog = page.locator("#settings")
    card = dialog.locator('.key-card[data-provider="image_gen_oai"]')
    expect(card.locator(".pill")).to_have_text("No key")
    key_input = card.get_by_label("Your OpenAI Image Tools API key")
    key_input.fill("sk-test-0123456789")
    card.get_by_role("button", name="Save key").click()
    saved = dialog.locator('.key-card[data-provider="image_gen_oai"]')
    expect(saved.locator(".pill")).to_have_text("Key saved")
    expect(saved.get_by_label("Your OpenAI Image Tools API key")).to_have_value("")  # never shown back
    expect(saved.get_by_role("button", name="Remove")).to_be_visible()
    assert "sk-test-0123456789" not in page.content()
    keys = page.request.get(keys_server.url + "/api/keys").json()["keys"]
    assert {k["provider"]: k["is_set"] for k in keys}["image_gen_oai"] is True
    assert "sk-test" not in str(keys)
    visitor.shot("settings-keys")

    dialog.get_by_role("tab", name="Tools").click()
    family = dialog.locator('.family-card[data-family="image_gen_oai"]')
    expect(family).to_contain_text("Uses your key.")
    expect(dialog.locator('.family-card[data-family="flux"]')).to_contain_text("Not available")
    expect(dialog.locator('.family-card[data-family="flux"]')).to_contain_text("FLUX_API_KEY")
    silent = dialog.locator('.family-card[data-family="stable-diffusion"]')  # SD_WEBUI_URL points at nothing
    expect(silent.locator(".pill")).to_have_text("Not answering")
    expect(silent.locator(".family-probe")).to_contain_text("Check SD_WEBUI_URL")
    visitor.shot("settings-tools")
    dialog.get_by_role("button", name="Close").click()

    visitor.send("Draw a teapot")
    expect(page.locator(".chat-image")).to_have_count(1)
    visitor.answer_done()


def test_agent_settings_turn_the_vision_handoff_off(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    page.get_by_role("button", name="Settings").click()
    dialog = page.locator("#settings")
    dialog.get_by_role("tab", name="Agent").click()
    dialog.get_by_role("button", name="Create your own agent").click()
    form = dialog.locator(".agent-form")
    expect(form.get_by_label("Name")).to_have_value("My agent")
    switch = form.get_by_role("switch", name="Vision handoff")
    expect(switch).to_be_checked()
    switch.focus()
    page.keyboard.press("Space")  # a switch works from the keyboard
    expect(switch).not_to_be_checked()
    form.get_by_role("button", name="Save agent").click()
    expect(page.locator(".toast", has_text="Agent saved.")).to_be_visible()  # the PATCH is done
    expect(dialog.locator(".agent-form").get_by_role("switch", name="Vision handoff")).not_to_be_checked()
    agents = page.request.get(server.url + "/api/agents").json()
    mine = [a for a in agents if a["id"] != "default"]
    assert [(a["name"], a["vision_handoff"]) for a in mine] == [("My agent", False)]
    visitor.shot("settings-agent")
    page.keyboard.press("Escape")

    visitor.send("Draw a paper boat")  # a new chat uses the chosen agent: the model gets only the ID
    expect(page.locator(".markdown").last).to_contain_text("cannot see")
    visitor.answer_done()


def test_second_user_sees_none_of_the_first_users_images(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    first = visit(server)
    first.sign_up()
    first.send("Draw a green lantern")
    expect(first.page.locator(".chat-image")).to_have_count(1)
    first.answer_done()
    image_id = first.page.locator(".chat-image").get_attribute("data-image-id")
    conversation = first.page.url.split("?c=")[1]

    second = visit(server)
    second.sign_up()
    page = second.page
    expect(page.locator("#library-empty")).to_be_visible()
    expect(page.locator(".library-item")).to_have_count(0)
    expect(page.locator(".conversation")).to_have_count(0)
    assert page.request.get(f"{server.url}/api/images/{image_id}/content").status == 404
    assert page.request.get(f"{server.url}/api/images/{image_id}/thumbnail").status == 404
    page.goto(f"{server.url}/?c={conversation}")
    second.wait_ready()
    expect(page.locator(".problem")).to_contain_text("could not be opened")
    expect(page.locator(".problem")).to_contain_text("another account")
    assert page.url == server.url + "/"  # a message now starts a chat of their own
    second.shot("second-user")


def test_uploads_by_button_drop_and_paste(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    page.locator("#file-input").set_input_files(
        files=[{"name": "red.png", "mimeType": "image/png", "buffer": _png((220, 30, 30))}]
    )
    attachments = page.locator("#attachments .attachment.is-ready")
    expect(attachments).to_have_count(1)
    drop = base64.b64encode(_png((30, 200, 40))).decode()
    page.evaluate(
        """([b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "green.png", { type: "image/png" }));
            const chat = document.getElementById("chat");
            for (const type of ["dragenter", "dragover", "drop"]) {
                chat.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
            }
            const pasted = new DataTransfer();
            pasted.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
            const box = document.getElementById("composer-input");
            box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: pasted, bubbles: true, cancelable: true }));
        }""",
        [drop],
    )
    expect(attachments).to_have_count(3)
    expect(page.locator("#drop-overlay")).to_be_hidden()
    expect(page.locator(".library-item[data-source=uploaded]")).to_have_count(3)  # uploaded straight away

    page.locator("#file-input").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}]
    )
    expect(page.locator("#composer-help")).to_contain_text("Only PNG, JPEG, WebP and GIF")
    attachments.nth(2).get_by_role("button").click()  # remove the pasted one
    expect(attachments).to_have_count(2)
    visitor.send("combine these together")
    expect(page.locator(".message-user .attachment-thumb")).to_have_count(2)
    edited = page.locator(".tool-card .chat-image")
    expect(edited).to_have_count(1)
    visitor.answer_done()
    edited.locator(".chat-image-open").click()
    expect(page.locator("#viewer .lineage-item")).to_have_count(2)
    page.keyboard.press("Escape")

    doomed = page.locator(".library-item[data-source=uploaded]").first
    doomed_id = doomed.get_attribute("data-image-id")
    doomed.hover()
    doomed.get_by_role("button", name=f"Delete {doomed_id}").click()
    page.locator("#confirm").get_by_role("button", name="Delete").click()
    expect(page.locator(".library-item[data-source=uploaded]")).to_have_count(2)
    assert page.request.get(f"{server.url}/api/images/{doomed_id}").status == 404


def test_stop_a_running_tool(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    skip = page.get_by_role("link", name="Skip to the message box")
    skip.focus()  # the first stop in the tab order, shown when focused; it leads to the message box
    box = skip.bounding_box()
    assert box is not None and box["y"] >= 0
    page.keyboard.press("Enter")
    expect(visitor.composer).to_be_focused()
    assert page.url.endswith("/")  # no #fragment
    visitor.send("Draw a slow snail [[sandbox:hang]]")
    card = page.locator(".tool-card.is-running")
    expect(card).to_have_count(1)
    expect(card.get_by_role("progressbar")).to_be_visible()
    stop = page.get_by_role("button", name="Stop the answer")
    expect(stop).to_be_visible()
    expect(page.locator("#send-button")).to_be_hidden()
    visitor.shot("tool-running")
    stop.click()
    expect(page.locator(".stopped-note")).to_contain_text("stopped")
    visitor.answer_done()
    expect(page.locator(".tool-card.is-running")).to_have_count(0)


def test_library_pages_on_scroll_and_filters(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server, dark=True)
    page = visitor.page
    visitor.sign_up()
    csrf = page.locator("body").get_attribute("data-csrf")
    assert csrf
    for index in range(32):
        made = page.request.post(
            server.url + "/api/images",
            headers={"X-CSRF-Token": csrf},
            multipart={"file": {"name": f"{index}.png", "mimeType": "image/png", "buffer": _png((index * 7, 90, 160))}},
        )
        assert made.status == 201, made.text()
    page.reload()
    visitor.wait_ready()
    items = page.locator(".library-item")
    expect(items).to_have_count(30)  # one page
    page.locator("#library-scroll").evaluate("el => el.scrollTo(0, el.scrollHeight)")
    expect(items).to_have_count(32)  # the next page came as the panel scrolled
    expect(page.locator("#library-more")).to_be_hidden()
    page.get_by_label("Show images").select_option("generated")
    expect(items).to_have_count(0)
    expect(page.locator("#library-empty")).to_have_text("No generated images.")
    page.get_by_label("Show images").select_option("uploaded")
    expect(items).to_have_count(30)
    visitor.shot("library-dark")


def test_rename_and_delete_a_conversation(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    page = visitor.page
    visitor.sign_up()
    visitor.send("hello there")
    visitor.answer_done()
    expect(page.locator(".message-assistant .markdown")).to_contain_text("sandbox assistant")
    item = page.locator(".conversation").first
    expect(item).to_contain_text("hello there")

    item.get_by_role("button", name=re.compile("^Rename")).click()
    rename = page.get_by_label(re.compile("^New title"))
    rename.fill("Greetings")
    rename.press("Enter")
    expect(page.locator(".conversation-link")).to_have_text(["Greetings"])
    expect(page.locator("#chat-title")).to_have_text("Greetings")

    page.locator(".conversation").first.get_by_role("button", name=re.compile("^Delete")).click()
    confirm = page.locator("#confirm")
    expect(confirm).to_contain_text("Greetings")
    confirm.get_by_role("button", name="Delete").click()
    expect(page.locator(".conversation")).to_have_count(0)
    expect(page.get_by_role("heading", name="What shall we make?")).to_be_visible()
    assert page.request.get(server.url + "/api/conversations").json() == []


def test_phone_width_puts_the_panels_in_drawers(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server, viewport=PHONE)
    page = visitor.page
    visitor.sign_up()
    visitor.send("Draw a small blue bird")
    expect(page.locator(".chat-image")).to_have_count(1)
    visitor.answer_done()
    library = page.locator("#library-panel")
    expect(library).to_be_hidden()
    expect(page.locator("#conversations-panel")).to_be_hidden()
    visitor.shot("phone-chat")

    toggle = page.get_by_role("button", name="Images", exact=True)
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(library).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(library.locator(".library-item")).to_have_count(1)
    visitor.shot("phone-library")
    page.keyboard.press("Escape")
    expect(library).to_be_hidden()

    page.get_by_role("button", name="Conversations").click()
    expect(page.locator("#conversations-panel")).to_be_visible()
    page.locator("#scrim").click(position={"x": 370, "y": 400})
    expect(page.locator("#conversations-panel")).to_be_hidden()
    box = page.locator("#composer-input").bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"]  # nothing spills off the screen
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]


def test_markdown_and_event_stream_parsing_are_safe(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    visitor = visit(server)
    visitor.sign_up()
    result = visitor.page.evaluate(
        """async () => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const { EventStreamParser } = await import("/static/api.js");
            const render = (text) => {
                const div = document.createElement("div");
                div.append(renderMarkdown(text));
                return div;
            };
            const hostile = render(
                '<img src=x onerror="window.pwned=1"> <script>window.pwned=1</script>\\n\\n' +
                '[click](javascript:window.pwned=1) [data](data:text/html,hi) [ok](https://example.org/a?b=1)\\n' +
                '**bold** *italic* `<b>code</b>` see https://example.org/x. and img_01ARZ3NDEKTSV4RRFFQ69G5FAV'
            );
            document.body.append(hostile);
            const parser = new EventStreamParser();
            const events = [
                ...parser.push('event: text_delta\\r\\ndata: {"text": "a"}\\r\\n\\r\\n: keep-alive\\n\\nevent: do'),
                ...parser.push("ne\\ndata: {}\\n"),
                ...parser.push("\\n"),
            ];
            return {
                elements: [...hostile.querySelectorAll("*")].map((el) => el.tagName.toLowerCase()),
                hrefs: [...hostile.querySelectorAll("a")].map((a) => a.getAttribute("href")),
                rels: [...hostile.querySelectorAll("a")].map((a) => a.rel),
                text: hostile.textContent,
                pwned: window.pwned ?? null,
                paragraphs: hostile.querySelectorAll("p").length,
                imageRefs: [...hostile.querySelectorAll(".image-ref")].map((b) => b.dataset.imageId),
                events,
            };
        }"""
    )
    assert result["pwned"] is None
    assert "script" not in result["elements"] and "img" not in result["elements"]
    assert set(result["elements"]) <= {"p", "br", "a", "strong", "em", "code", "button"}
    assert result["hrefs"] == ["https://example.org/a?b=1", "https://example.org/x"]
    assert set(result["rels"]) == {"noopener noreferrer nofollow"}
    assert "<script>window.pwned=1</script>" in result["text"]  # shown as typed, never run
    assert "[click](javascript:window.pwned=1)" in result["text"]
    assert "<b>code</b>" in result["text"]
    assert result["paragraphs"] == 2
    assert result["imageRefs"] == ["img_01ARZ3NDEKTSV4RRFFQ69G5FAV"]
    assert result["events"] == [{"event": "text_delta", "data": '{"text": "a"}'}, {"event": "done", "data": "{}"}]


def test_api_docs_work_offline_under_the_strict_csp(server: LimnerServer, visit: Callable[..., Visitor]) -> None:
    """/docs, which the quick start points at, renders from limner's own files: no CDN (tests have no internet)."""
    visitor = visit(server)
    page = visitor.page
    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(server.url) else None)
    response = page.goto(server.url + "/docs")
    assert response is not None and response.status == 200
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("limner")
    expect(page.locator(".opblock-summary-path", has_text="/api/tools/{name}").first).to_be_visible()
    page.locator(".opblock-summary-path", has_text="/api/health").first.click()  # an operation opens
    expect(page.get_by_role("button", name="Try it out").first).to_be_visible()
    visitor.shot("api-docs")
    assert outside == []
    assert page.request.get(server.url + "/redoc").status == 404  # no second page that needs a CDN
