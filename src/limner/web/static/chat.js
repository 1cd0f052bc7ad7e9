// The conversation: its messages, and the answer streaming in. One Turn renders one answer from the
// event stream: text as it arrives (safe markdown), a card per tool call with its progress and
// partial images, the images inline, and failures with their message and hint.

import { ApiError, NetworkError, api, sendMessage } from "./api.js";
import { h, icon, iconButton, shorten } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const TOOL_LABELS = {
  image_gen_oai: "Making a picture",
  image_edit_oai: "Changing the picture",
  dalle: "Making a picture with DALL·E",
  "stable-diffusion": "Making a picture with Stable Diffusion",
  "stable-diffusion-edit": "Changing the picture with Stable Diffusion",
  flux: "Working with Flux",
  image_list: "Looking through your images",
  image_view: "Looking at an image",
};

const FAILURE_TITLES = {
  image_gen_oai: "The picture could not be made",
  dalle: "The picture could not be made",
  "stable-diffusion": "The picture could not be made",
  flux: "Flux could not finish",
  image_edit_oai: "The picture could not be changed",
  "stable-diffusion-edit": "The picture could not be changed",
};

const SUGGESTIONS = [
  "Draw a lighthouse at dusk, in watercolour",
  "Create a poster of a fox reading a book",
  "Paint a bowl of lemons on a blue table",
];

export function contentUrl(id) {
  return `/api/images/${encodeURIComponent(id)}/content`;
}

export function thumbnailUrl(id) {
  return `/api/images/${encodeURIComponent(id)}/thumbnail`;
}

/** An image in the chat: opens the viewer; can be attached to the next message or downloaded. */
export function imageFigure(image, { alt, actions }) {
  const img = h("img", {
    src: image.content_url ?? contentUrl(image.id),
    alt: alt ? shorten(alt) : `Image ${image.id}`,
    width: image.width,
    height: image.height,
    loading: "lazy",
    decoding: "async",
  });
  img.addEventListener("error", () => figure.classList.add("is-missing"), { once: true });
  const figure = h(
    "figure",
    { class: "chat-image", dataset: { imageId: image.id } },
    h("button", { type: "button", class: "chat-image-open", "aria-label": `Open ${alt ? `“${shorten(alt, 80)}”` : image.id} in the viewer` }, img),
    h(
      "figcaption",
      { class: "chat-image-caption" },
      image.is_sandbox ? h("span", { class: "badge badge-sandbox", text: "Sandbox", title: "A test render from limner's emulators" }) : null,
      image.width ? h("span", { class: "muted", text: `${image.width}×${image.height}` }) : null,
      h("span", { class: "spacer" }),
      iconButton("paperclip", "Use in next message", { className: "button ghost tiny", hideLabel: false, onclick: () => actions.attach(image) }),
      h(
        "a",
        { class: "button ghost tiny", href: image.content_url ?? contentUrl(image.id), download: image.id },
        icon("download"),
        h("span", { class: "label-text", text: "Download" }),
      ),
    ),
  );
  figure.querySelector(".chat-image-open").addEventListener("click", () => actions.open(image.id));
  figure.append(h("p", { class: "missing-note", text: "This image was deleted." }));
  return figure;
}

function userMessage(text, imageIds, actions) {
  return h(
    "article",
    { class: "message message-user", "aria-label": "You said" },
    imageIds.length
      ? h(
          "ul",
          { class: "message-attachments", "aria-label": "Attached images" },
          imageIds.map((id) =>
            h(
              "li",
              {},
              h(
                "button",
                { type: "button", class: "attachment-thumb", "aria-label": `Open attached image ${id}`, onclick: () => actions.open(id) },
                h("img", { src: thumbnailUrl(id), alt: "", loading: "lazy" }),
              ),
            ),
          ),
        )
      : null,
    h("div", { class: "bubble", text }),
  );
}

function assistantShell() {
  const body = h("div", { class: "message-body" });
  const el = h(
    "article",
    { class: "message message-assistant", "aria-label": "limner answered" },
    h("div", { class: "assistant-avatar", "aria-hidden": "true" }, icon("brand")),
    body,
  );
  return { el, body };
}

/** Something went wrong: the message, the hint, who failed; optionally a retry button. */
export function problem({ title, error, kind = "error", retry = null }) {
  const details = [error?.provider ? `Provider: ${error.provider}` : null, error?.code ? `Code: ${error.code}` : null].filter(Boolean);
  return h(
    "div",
    { class: `problem problem-${kind}`, role: "alert" },
    icon(kind === "offline" ? "wifi-off" : "alert", "problem-icon"),
    h(
      "div",
      { class: "problem-text" },
      h("p", { class: "problem-title", text: title }),
      error?.message ? h("p", { class: "problem-message", text: error.message }) : null,
      error?.hint ? h("p", { class: "problem-hint" }, h("strong", { text: "What to do: " }), error.hint) : null,
      details.length ? h("p", { class: "problem-details", text: details.join(" · ") }) : null,
      retry ? iconButton("refresh", "Try again", { className: "button small", hideLabel: false, onclick: retry }) : null,
    ),
  );
}

/** A card for one tool call: what runs, its progress, partial images, then its images or its failure. */
class ToolCard {
  constructor(data) {
    this.tool = data.tool;
    this.prompt = typeof data.arguments?.prompt === "string" ? data.arguments.prompt : "";
    this.partials = 0;
    this.images = h("div", { class: "tool-images" });
    this.state = h("span", { class: "tool-state", text: "Working…" });
    this.bar = h("div", { class: "progress-bar" });
    this.progress = h("div", { class: "progress is-indeterminate", role: "progressbar", "aria-label": `${this.tool} progress`, "aria-valuemin": "0", "aria-valuemax": "100" }, this.bar);
    this.message = h("p", { class: "tool-message", hidden: true });
    this.partial = h("img", { class: "tool-partial", alt: "The picture so far, still being made", hidden: true });
    this.el = h(
      "section",
      { class: "tool-card is-running", dataset: { tool: this.tool, toolCallId: data.tool_call_id }, "aria-label": `Tool ${this.tool}` },
      h(
        "div",
        { class: "tool-head" },
        h("span", { class: "tool-icon" }, icon("wand")),
        h("span", { class: "tool-title", text: TOOL_LABELS[this.tool] ?? `Running ${this.tool}` }),
        h("code", { class: "tool-name", text: this.tool }),
        this.state,
      ),
      this.prompt ? h("p", { class: "tool-prompt", text: this.prompt }) : null,
      this.progress,
      this.message,
      this.partial,
      this.images,
    );
  }

  onProgress(data) {
    if (typeof data.fraction === "number") {
      const percent = Math.round(Math.max(0, Math.min(1, data.fraction)) * 100);
      this.progress.classList.remove("is-indeterminate");
      this.progress.setAttribute("aria-valuenow", String(percent));
      this.bar.style.width = `${percent}%`;
      this.state.textContent = `${percent}%`;
    }
    if (data.message) {
      this.message.textContent = data.message;
      this.message.hidden = false;
    }
    if (typeof data.partial_image === "string" && data.partial_image.startsWith("data:image/")) {
      this.partial.src = data.partial_image;
      this.partial.hidden = false;
      this.partials += 1;
      this.el.dataset.partials = String(this.partials);
    }
  }

  addImage(figure) {
    this.partial.hidden = true;
    this.images.append(figure);
  }

  fail(data) {
    this.finish("is-failed", "Failed");
    this.el.append(problem({ title: FAILURE_TITLES[this.tool] ?? `${this.tool} failed`, error: data }));
  }

  finish(className = "is-done", label = "Done") {
    if (!this.el.classList.contains("is-running")) return;
    this.el.classList.replace("is-running", className);
    this.progress.remove();
    this.partial.hidden = true;
    this.state.replaceChildren(icon(className === "is-done" ? "check" : "alert"), label);
  }
}

/** One answer as it streams in. */
class Turn {
  constructor(body, actions) {
    this.body = body;
    this.actions = actions;
    this.cards = new Map();
    this.segment = null; // the text block being written (text after a tool card starts a new one)
    this.text = "";
    this.pending = false;
    this.sawContent = false;
    this.typing = h("div", { class: "typing", "aria-label": "limner is writing" }, h("span"), h("span"), h("span"));
    this.body.append(this.typing);
  }

  place(node) {
    this.body.insertBefore(node, this.typing.isConnected ? this.typing : null);
    this.sawContent = true;
  }

  onText(piece) {
    if (!this.segment) {
      this.segment = h("div", { class: "markdown" });
      this.text = "";
      this.place(this.segment);
    }
    this.text += piece;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.segment?.replaceChildren(renderMarkdown(this.text));
      this.actions.changed();
    });
  }

  flushText() {
    if (this.segment) this.segment.replaceChildren(renderMarkdown(this.text));
  }

  onToolStarted(data) {
    this.flushText();
    this.segment = null;
    const card = new ToolCard(data);
    this.cards.set(data.tool_call_id, card);
    this.place(card.el);
  }

  card(data) {
    if (!this.cards.has(data.tool_call_id)) this.onToolStarted({ ...data, arguments: {} });
    return this.cards.get(data.tool_call_id);
  }

  onImage(data) {
    const card = this.card(data);
    card.addImage(imageFigure(data.image, { alt: card.prompt, actions: this.actions }));
    this.actions.imageReady(data.image);
  }

  end() {
    this.flushText();
    this.typing.remove();
    for (const card of this.cards.values()) card.finish();
  }

  /** Handle one event; true when the turn is over. */
  handle({ event, data }) {
    switch (event) {
      case "text_delta":
        this.onText(data.text ?? "");
        break;
      case "tool_call_started":
        this.onToolStarted(data);
        break;
      case "progress":
        this.card(data).onProgress(data);
        break;
      case "image_ready":
        this.onImage(data);
        break;
      case "tool_failed":
        this.card(data).fail(data);
        break;
      case "tool_finished":
        this.card(data).finish();
        break;
      case "done":
        this.end();
        if (!this.sawContent) this.place(h("p", { class: "muted", text: "(No answer.)" }));
        return true;
      case "error":
        this.end();
        this.place(problem({ title: "The answer failed", error: data, retry: this.actions.retry }));
        return true;
      case "stopped":
        this.end();
        this.place(h("p", { class: "stopped-note" }, icon("stop"), data.message || "Stopped."));
        return true;
      default:
        break;
    }
    this.actions.changed();
    return false;
  }
}

/** The chat pane: one conversation at a time; answers keep streaming when you look elsewhere. */
export class Chat {
  constructor({ thread, scroller, title, composer, hooks }) {
    Object.assign(this, { thread, scroller, title, composer, hooks });
    this.conversationId = null;
    this.running = new Map(); // conversation ID -> {view, controller}
    this.pinned = true;
    this.loadToken = 0;
    this.lastTop = 0;
    scroller.addEventListener("scroll", () => {
      // Follow the answer while the reader is at the bottom; stop when they scroll up. Growth of the
      // content does not move scrollTop, so it never counts as the reader leaving the bottom.
      const top = scroller.scrollTop;
      if (scroller.scrollHeight - top - scroller.clientHeight < 80) this.pinned = true;
      else if (top < this.lastTop - 1) this.pinned = false;
      this.lastTop = top;
    });
    new ResizeObserver(() => this.stick()).observe(thread);
    thread.addEventListener("click", (event) => {
      const ref = event.target.closest(".image-ref");
      if (ref) hooks.openImage(ref.dataset.imageId);
    });
    composer.onSend = (message) => this.send(message);
    composer.onStop = () => this.stop();
  }

  stick() {
    if (this.pinned) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  actionsFor() {
    return {
      open: (id) => this.hooks.openImage(id),
      attach: (image) => this.composer.attachImage(image),
      imageReady: (image) => this.hooks.imageReady(image),
      changed: () => this.stick(),
      retry: null,
    };
  }

  setTitle(text) {
    this.title.textContent = text;
    document.title = text === "New chat" ? "limner" : `${text} · limner`;
  }

  showView(view) {
    this.thread.replaceChildren(view);
    this.pinned = true;
    this.stick();
    this.composer.setBusy(this.running.has(this.conversationId));
  }

  /** Show a conversation (null: a new, empty one). */
  async open(id, { title } = {}) {
    this.conversationId = id;
    const token = ++this.loadToken;
    if (id === null) {
      this.setTitle("New chat");
      this.showView(this.welcome());
      return true;
    }
    const live = this.running.get(id);
    if (live) {
      this.setTitle(title ?? this.title.textContent);
      this.showView(live.view);
      return true;
    }
    this.setTitle(title ?? "…");
    this.thread.setAttribute("aria-busy", "true");
    try {
      const conversation = await api.get(`/api/conversations/${encodeURIComponent(id)}`);
      if (token !== this.loadToken) return true;
      this.setTitle(conversation.title);
      this.showView(this.history(conversation));
      return true;
    } catch (error) {
      if (token !== this.loadToken) return true;
      if (error.code === "conversation_not_found") {
        this.conversationId = null; // a message now starts a new chat, not a 404
        this.hooks.missing(id);
        this.setTitle("New chat");
        const note = { message: "It may have been deleted, or it belongs to another account.", hint: "Start a new chat below." };
        this.showView(h("div", { class: "thread-view" }, problem({ title: "This conversation could not be opened", error: note })));
      } else {
        this.setTitle("Could not load this chat");
        const retry = () => this.open(id, { title });
        this.showView(h("div", { class: "thread-view" }, problem({ title: "This conversation could not be opened", error, retry })));
      }
      return false;
    } finally {
      this.thread.removeAttribute("aria-busy");
    }
  }

  welcome() {
    const sandbox = document.body.dataset.sandbox;
    return h(
      "div",
      { class: "thread-view welcome" },
      h("div", { class: "welcome-mark", "aria-hidden": "true" }, icon("brand")),
      h("h2", { class: "welcome-title", text: "What shall we make?" }),
      h("p", { class: "welcome-text", text: "Describe a picture, or attach one of yours and say what to change. Every image lands in your library on the right." }),
      h(
        "ul",
        { class: "suggestions", "aria-label": "Suggestions" },
        SUGGESTIONS.map((text) => h("li", {}, h("button", { type: "button", class: "suggestion", text, onclick: () => this.composer.setText(text) }))),
      ),
      sandbox
        ? h(
            "p",
            { class: "sandbox-note" },
            h("strong", { text: "Sandbox mode. " }),
            `${sandbox[0].toUpperCase()}${sandbox.slice(1)}, so pictures are test renders from limner's built-in emulators, not a real image model.`,
          )
        : null,
    );
  }

  history(conversation) {
    const view = h("div", { class: "thread-view" });
    const actions = this.actionsFor();
    for (const message of conversation.messages) {
      if (message.role === "user") {
        view.append(userMessage(message.text, message.image_ids, actions));
        continue;
      }
      const { el, body } = assistantShell();
      if (message.text) body.append(h("div", { class: "markdown" }, renderMarkdown(message.text)));
      if (message.image_ids.length) {
        body.append(h("div", { class: "tool-images" }, message.image_ids.map((id) => imageFigure({ id }, { actions }))));
      }
      view.append(el);
    }
    if (conversation.messages.length === 0) return this.welcome();
    return view;
  }

  /** Send a message in the current conversation (creating it first when new) and stream the answer. */
  async send({ text, imageIds }) {
    let id = this.conversationId;
    const fresh = id === null;
    if (fresh) {
      try {
        let conversation;
        try {
          conversation = await api.post("/api/conversations", this.hooks.newConversationBody());
        } catch (error) {
          if (error.code !== "agent_not_found") throw error;
          this.hooks.agentMissing(); // the chosen agent was deleted elsewhere: the built-in one answers
          conversation = await api.post("/api/conversations", {});
        }
        id = conversation.id;
        this.conversationId = id;
        this.hooks.created(conversation, text);
      } catch (error) {
        this.thread.append(problem({ title: "Could not start a conversation", error }));
        this.composer.setText(text); // nothing was sent: keep what they wrote
        return;
      }
    }
    let view = this.thread.querySelector(".thread-view");
    if (fresh || !view || view.classList.contains("welcome")) {
      view = h("div", { class: "thread-view" });
      this.thread.replaceChildren(view);
    }
    this.runTurn(id, view, text, imageIds);
  }

  async runTurn(id, view, text, imageIds) {
    const actions = this.actionsFor();
    const userEl = userMessage(text, imageIds, actions);
    const { el, body } = assistantShell();
    view.append(userEl, el);
    const controller = new AbortController();
    this.running.set(id, { view, controller });
    if (this.conversationId === id) this.composer.setBusy(true);
    this.pinned = true;
    this.stick();
    const turn = new Turn(body, actions);
    actions.retry = () => {
      userEl.remove();
      el.remove();
      if (!this.running.has(id)) this.runTurn(id, view, text, imageIds);
    };
    el.setAttribute("aria-busy", "true");
    let finished = false;
    try {
      for await (const event of sendMessage(id, { text, image_ids: imageIds }, { signal: controller.signal })) {
        if (turn.handle(event)) {
          finished = true;
          break;
        }
      }
      if (!finished) throw new NetworkError();
    } catch (error) {
      turn.end();
      if (error?.name === "AbortError") {
        turn.place(h("p", { class: "stopped-note" }, icon("stop"), "Stopped."));
      } else if (error instanceof NetworkError || (error instanceof ApiError && (error.status >= 500 || error.code === "turn_in_progress"))) {
        const lost = error instanceof NetworkError;
        turn.place(
          problem({
            kind: lost ? "offline" : "error",
            title: lost ? "Connection lost: the answer did not finish" : "The answer failed",
            error: lost ? { hint: "Check your connection; your message is kept, try again when you are back online." } : error,
            retry: actions.retry,
          }),
        );
      } else {
        turn.place(problem({ title: "The message was not sent", error }));
      }
    } finally {
      el.removeAttribute("aria-busy");
      this.running.delete(id);
      if (this.conversationId === id) this.composer.setBusy(false);
      this.stick();
      this.hooks.turnEnded(id);
    }
  }

  /** Ask the server to stop the answer; if that fails, drop the connection (which stops it too). */
  async stop() {
    const id = this.conversationId;
    const live = this.running.get(id);
    if (!live) return;
    try {
      await api.post(`/api/conversations/${encodeURIComponent(id)}/stop`);
    } catch {
      live.controller.abort();
    }
  }

  /** A conversation was deleted: forget it, and show a new chat when it was open. */
  forget(id) {
    this.running.get(id)?.controller.abort();
    this.running.delete(id);
    if (this.conversationId === id) this.open(null);
  }

  /** An image was deleted: its figures in the chat say so. */
  imageDeleted(id) {
    for (const figure of this.thread.querySelectorAll(`.chat-image[data-image-id="${CSS.escape(id)}"]`)) {
      figure.classList.add("is-missing");
    }
  }
}
