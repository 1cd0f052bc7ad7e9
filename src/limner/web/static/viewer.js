// The image viewer: the image large, what made it (prompt, revised prompt, model, size, parameters),
// the images it was made from (lineage, from GET /api/images/{id}), download, attach, delete.

import { api } from "./api.js";
import { formatBytes, formatDate, h, icon, iconButton, shorten } from "./dom.js";

const SOURCE_TEXT = {
  generated: "Generated",
  edited: "Edited",
  uploaded: "Uploaded",
  mcp: "From an MCP server",
};

function row(term, value) {
  if (value === null || value === undefined || value === "") return null;
  return [h("dt", { text: term }), h("dd", {}, value)];
}

function paramText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export class Viewer {
  constructor(dialog, hooks) {
    this.dialog = dialog;
    this.body = dialog.querySelector("#viewer-body");
    this.title = dialog.querySelector("#viewer-title");
    this.hooks = hooks;
    this.trail = []; // IDs visited through the lineage, for Back
    this.token = 0;
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close(); // a click on the backdrop
    });
    dialog.addEventListener("close", () => {
      this.trail = [];
      this.body.replaceChildren();
      this.returnFocus?.focus?.();
    });
  }

  /** Open an image; `via` keeps the lineage trail (Back returns to the image before). */
  async open(id, { via = false } = {}) {
    if (!this.dialog.open) {
      this.returnFocus = document.activeElement;
      this.trail = [];
      this.dialog.showModal();
    }
    if (!via) this.trail = [];
    this.trail.push(id);
    const token = ++this.token;
    this.title.textContent = "Image";
    this.body.replaceChildren(h("p", { class: "muted loading-line", text: "Loading…" }));
    this.body.setAttribute("aria-busy", "true");
    try {
      const image = await api.get(`/api/images/${encodeURIComponent(id)}`);
      if (token === this.token) this.render(image);
    } catch (error) {
      if (token !== this.token) return;
      this.body.replaceChildren(
        h("div", { class: "problem problem-error", role: "alert" }, icon("alert", "problem-icon"), h("div", { class: "problem-text" }, h("p", { class: "problem-title", text: "This image could not be opened" }), h("p", { text: error.message }))),
      );
    } finally {
      if (token === this.token) this.body.removeAttribute("aria-busy");
    }
  }

  back() {
    this.trail.pop();
    const previous = this.trail.pop();
    if (previous) this.open(previous, { via: true });
  }

  render(image) {
    this.title.textContent = image.prompt ? "Image details" : `Image ${image.id}`;
    const picture = h(
      "div",
      { class: "viewer-picture" },
      h("img", { src: image.content_url, alt: image.prompt ? shorten(image.prompt, 300) : `Image ${image.id}`, width: image.width, height: image.height }),
    );
    const details = h(
      "div",
      { class: "viewer-details" },
      this.trail.length > 1 ? iconButton("arrow-left", "Back", { className: "button ghost small back-button", hideLabel: false, onclick: () => this.back() }) : null,
      this.actions(image),
      image.prompt ? h("section", { class: "viewer-section" }, h("h3", { text: "Prompt" }), h("p", { class: "viewer-prompt", text: image.prompt })) : null,
      image.revised_prompt
        ? h("section", { class: "viewer-section" }, h("h3", { text: "Revised prompt" }), h("p", { class: "viewer-prompt revised", text: image.revised_prompt }))
        : null,
      this.lineage(image),
      h(
        "section",
        { class: "viewer-section" },
        h("h3", { text: "Details" }),
        h(
          "dl",
          { class: "facts image-facts" },
          row("Source", SOURCE_TEXT[image.source] ?? image.source),
          row("Model", image.model),
          row("Tool", image.tool ? h("code", { text: image.tool }) : null),
          row("Backend", image.backend),
          row("Size", `${image.width} × ${image.height}`),
          row("Format", image.media_type),
          row("File", formatBytes(image.byte_size)),
          row("Made", formatDate(image.created_at)),
          row("Name", image.original_name),
          row("ID", h("code", { class: "image-id", text: image.id })),
          image.is_sandbox ? row("Sandbox", "A test render from limner's emulators") : null,
        ),
      ),
      this.parameters(image.parameters),
    );
    this.body.replaceChildren(picture, details);
  }

  actions(image) {
    return h(
      "div",
      { class: "viewer-actions" },
      h("a", { class: "button primary", href: image.content_url, download: image.id }, icon("download"), h("span", { text: "Download" })),
      iconButton("paperclip", "Use in next message", {
        className: "button",
        hideLabel: false,
        onclick: () => {
          this.hooks.attach(image);
          this.dialog.close();
        },
      }),
      iconButton("trash", "Delete", {
        className: "button danger-ghost",
        hideLabel: false,
        onclick: async () => {
          if (await this.hooks.delete(image.id)) this.dialog.close();
        },
      }),
    );
  }

  parameters(parameters) {
    const entries = Object.entries(parameters ?? {}).filter(([, value]) => value !== null && value !== undefined);
    if (entries.length === 0) return null;
    return h(
      "section",
      { class: "viewer-section" },
      h("h3", { text: "Parameters" }),
      h("dl", { class: "facts parameter-facts" }, entries.map(([key, value]) => row(key, h("code", { text: paramText(value) })))),
    );
  }

  lineage(image) {
    if (!image.parents?.length) return null;
    return h(
      "section",
      { class: "viewer-section lineage" },
      h("h3", { text: image.parents.length === 1 ? "Made from" : `Made from ${image.parents.length} images` }),
      h(
        "ul",
        { class: "lineage-list" },
        image.parents.map((parent) =>
          h(
            "li",
            { class: "lineage-item", dataset: { imageId: parent.id } },
            parent.image
              ? h(
                  "button",
                  {
                    type: "button",
                    class: "lineage-thumb",
                    "aria-label": `Open the ${parent.role === "mask" ? "mask" : "parent image"} ${parent.id}`,
                    onclick: () => this.open(parent.id, { via: true }),
                  },
                  h("img", { src: parent.image.thumbnail_url, alt: "" }),
                )
              : h("span", { class: "lineage-thumb is-deleted", text: "Deleted" }),
            h("span", { class: "lineage-role", text: parent.role === "mask" ? "Mask" : "Input" }),
            h("code", { class: "lineage-id", text: parent.id }),
          ),
        ),
      ),
    );
  }
}
