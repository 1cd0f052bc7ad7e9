// The side panel: the user's images as thumbnails, newest first, more loading as you scroll
// (GET /api/images?before=), filtered by source. Each can be opened, attached to the next
// message, or deleted.

import { api } from "./api.js";
import { h, iconButton, shorten } from "./dom.js";

const PAGE = 30;

const SOURCE_LABELS = { generated: "Generated", edited: "Edited", uploaded: "Uploaded", mcp: "MCP" };

export class Library {
  constructor({ grid, empty, more, filter, scrollRoot, hooks }) {
    Object.assign(this, { grid, empty, more, filter, hooks });
    this.next = null;
    this.loading = false;
    this.generation = 0;
    this.ids = new Set();
    filter.addEventListener("change", () => this.reset());
    more.addEventListener("click", () => this.loadMore());
    this.observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((entry) => entry.isIntersecting)) this.loadMore();
      },
      { root: scrollRoot, rootMargin: "200px" },
    );
    this.observer.observe(more);
  }

  async reset() {
    this.generation += 1;
    this.next = null;
    this.ids.clear();
    this.grid.replaceChildren();
    await this.load(null);
  }

  async loadMore() {
    if (this.next && !this.loading) await this.load(this.next);
  }

  async load(before) {
    const generation = this.generation;
    this.loading = true;
    this.grid.setAttribute("aria-busy", "true");
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (before) params.set("before", before);
    if (this.filter.value) params.set("source", this.filter.value);
    try {
      const page = await api.get(`/api/images?${params}`);
      if (generation !== this.generation) return;
      for (const image of page.images) this.add(image, false);
      this.next = page.next_before;
    } catch (error) {
      if (generation !== this.generation) return;
      this.next = before;
      this.hooks.failed(error);
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.grid.removeAttribute("aria-busy");
        this.update();
      }
    }
  }

  update() {
    this.more.hidden = !this.next;
    this.empty.hidden = this.grid.children.length > 0 || this.loading;
    this.empty.textContent = this.filter.value
      ? `No ${SOURCE_LABELS[this.filter.value].toLowerCase()} images.`
      : "No images yet. Ask for a picture, or attach one of your own.";
  }

  /** A new image (generated, edited, uploaded): at the top, when it fits the filter. */
  prepend(image) {
    if (this.filter.value && image.source !== this.filter.value) return;
    this.add(image, true);
    this.update();
  }

  add(image, first) {
    if (this.ids.has(image.id)) return;
    this.ids.add(image.id);
    const alt = image.prompt ? shorten(image.prompt, 200) : `${SOURCE_LABELS[image.source] ?? "An"} image ${image.id}`;
    const item = h(
      "li",
      { class: "library-item", dataset: { imageId: image.id, source: image.source ?? "" } },
      h(
        "button",
        { type: "button", class: "library-thumb", "aria-label": `Open ${image.prompt ? `“${shorten(image.prompt, 80)}”` : image.id}`, onclick: () => this.hooks.open(image.id) },
        h("img", { src: image.thumbnail_url, alt: "", loading: "lazy", decoding: "async" }),
      ),
      image.source ? h("span", { class: `library-source source-${image.source}`, text: SOURCE_LABELS[image.source] ?? image.source }) : null,
      h(
        "div",
        { class: "library-actions" },
        iconButton("paperclip", `Attach ${image.id} to the next message`, { className: "icon-button on-image", onclick: () => this.hooks.attach(image) }),
        iconButton("trash", `Delete ${image.id}`, { className: "icon-button on-image danger", onclick: () => this.hooks.delete(image.id) }),
      ),
    );
    item.title = alt;
    if (first) this.grid.prepend(item);
    else this.grid.append(item);
  }

  remove(id) {
    this.ids.delete(id);
    this.grid.querySelector(`.library-item[data-image-id="${CSS.escape(id)}"]`)?.remove();
    this.update();
  }
}
