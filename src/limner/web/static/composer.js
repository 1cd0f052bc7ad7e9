// The message box: text, and images attached by button, paste, drag and drop, or from the library.
// Files upload as soon as they are attached (POST /api/images) and show as thumbnails; the message
// carries only their IDs.

import { api } from "./api.js";
import { h, icon, iconButton } from "./dom.js";

const ACCEPTED = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);
const MAX_ATTACHMENTS = 16;
const BUSY_HELP = "An answer is being written: wait for it, or stop it.";

let nextKey = 1;

export class Composer {
  constructor({ form, textarea, fileInput, attachButton, list, sendButton, stopButton, help, dropZone, dropOverlay }) {
    Object.assign(this, { form, textarea, fileInput, attachButton, list, sendButton, stopButton, help, dropZone, dropOverlay });
    this.items = []; // {key, id, thumb, name, upload (promise), error, el}
    this.onSend = async () => {};
    this.onStop = () => {};
    this.onUploaded = () => {};
    this.helpText = help.textContent;
    this.busy = false;
    this.wire();
  }

  wire() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey && !event.isComposing) {
        event.preventDefault();
        if (this.busy) this.showHelp(BUSY_HELP);
        else this.submit();
      }
    });
    this.textarea.addEventListener("input", () => {
      this.autosize();
      this.showHelp();
    });
    this.textarea.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])].filter((file) => file.type.startsWith("image/"));
      if (files.length === 0) return;
      if (!event.clipboardData.getData("text/plain")) event.preventDefault();
      this.attachFiles(files);
    });
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.attachFiles([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.stopButton.addEventListener("click", () => this.onStop());
    this.wireDrop();
  }

  wireDrop() {
    let depth = 0;
    const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
    this.dropZone.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth += 1;
      this.dropOverlay.hidden = false;
    });
    this.dropZone.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    this.dropZone.addEventListener("dragleave", (event) => {
      if (!hasFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.dropOverlay.hidden = true;
    });
    this.dropZone.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      this.dropOverlay.hidden = true;
      this.attachFiles([...event.dataTransfer.files]);
      this.textarea.focus();
    });
  }

  autosize() {
    this.textarea.style.height = "auto";
    this.textarea.style.height = `${this.textarea.scrollHeight}px`;
  }

  focus() {
    this.textarea.focus();
  }

  setText(text) {
    this.textarea.value = text;
    this.autosize();
    this.textarea.focus();
    this.textarea.setSelectionRange(text.length, text.length);
  }

  /** Show the Stop button instead of Send while an answer is being written. */
  setBusy(busy) {
    this.busy = busy;
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    if (!busy && this.help.textContent === BUSY_HELP) this.showHelp();
  }

  showHelp(message = null) {
    this.help.textContent = message ?? this.helpText;
    this.help.classList.toggle("is-error", message !== null);
  }

  room() {
    return MAX_ATTACHMENTS - this.items.length;
  }

  attachFiles(files) {
    const images = files.filter((file) => ACCEPTED.has(file.type));
    if (images.length < files.length) {
      this.showHelp("Only PNG, JPEG, WebP and GIF images can be attached.");
    }
    if (images.length > this.room()) this.showHelp(`A message takes at most ${MAX_ATTACHMENTS} images.`);
    for (const file of images.slice(0, Math.max(0, this.room()))) {
      const item = { key: nextKey++, id: null, name: file.name || "Pasted image", thumb: URL.createObjectURL(file) };
      item.upload = api
        .upload(file)
        .then((image) => {
          item.id = image.id;
          this.onUploaded(image);
        })
        .catch((error) => {
          item.error = error;
        })
        .finally(() => this.renderItem(item));
      this.items.push(item);
      this.renderItem(item);
    }
    this.renderList();
  }

  /** Attach an image already in the library (no upload). */
  attachImage(image) {
    if (this.items.some((item) => item.id === image.id)) {
      this.focus();
      return;
    }
    if (this.room() <= 0) {
      this.showHelp(`A message takes at most ${MAX_ATTACHMENTS} images.`);
      return;
    }
    const item = { key: nextKey++, id: image.id, name: image.id, thumb: image.thumbnail_url, upload: Promise.resolve() };
    this.items.push(item);
    this.renderItem(item);
    this.renderList();
    this.focus();
  }

  /** Drop an attached image that was deleted from the library. */
  forget(imageId) {
    for (const item of this.items.filter((i) => i.id === imageId)) this.remove(item);
  }

  remove(item) {
    this.items = this.items.filter((other) => other !== item);
    item.el?.remove();
    if (item.thumb.startsWith("blob:")) URL.revokeObjectURL(item.thumb);
    this.renderList();
  }

  renderList() {
    this.list.hidden = this.items.length === 0;
  }

  renderItem(item) {
    const state = item.error ? "failed" : item.id ? "ready" : "uploading";
    const label = item.error
      ? `${item.name}: upload failed. ${item.error.message}`
      : item.id
        ? `Attached image ${item.id}`
        : `${item.name}, uploading`;
    const el = h(
      "li",
      { class: `attachment is-${state}`, dataset: { imageId: item.id ?? "" }, title: item.error ? `${item.error.message} ${item.error.hint ?? ""}` : null },
      h("img", { src: item.thumb, alt: label }),
      state === "uploading" ? h("span", { class: "spinner", role: "progressbar", "aria-label": `Uploading ${item.name}` }) : null,
      state === "failed" ? h("span", { class: "attachment-error" }, icon("alert")) : null,
      iconButton("x", `Remove ${item.id ?? item.name}`, { className: "icon-button attachment-remove", onclick: () => this.remove(item) }),
    );
    if (item.el) item.el.replaceWith(el);
    else this.list.append(el);
    item.el = el;
    if (item.error) this.showHelp(`Could not upload ${item.name}: ${item.error.message} ${item.error.hint ?? ""}`.trim());
  }

  async submit() {
    if (this.busy) return;
    const text = this.textarea.value.trim();
    if (!text) {
      this.showHelp(this.items.length ? "Add a few words: what should happen with the images?" : "Write a message first.");
      this.focus();
      return;
    }
    this.sendButton.disabled = true;
    try {
      await Promise.all(this.items.map((item) => item.upload));
      const failed = this.items.filter((item) => item.error);
      if (failed.length) {
        this.showHelp("Remove the images that failed to upload, then send again.");
        return;
      }
      const imageIds = this.items.map((item) => item.id);
      this.textarea.value = "";
      this.autosize();
      this.showHelp();
      for (const item of [...this.items]) this.remove(item);
      this.renderList();
      await this.onSend({ text, imageIds });
    } finally {
      this.sendButton.disabled = false;
    }
  }
}
