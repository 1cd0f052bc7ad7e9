// The conversation list: most recently active first; open, rename in place, delete.

import { api } from "./api.js";
import { confirmAction, h, iconButton, toast } from "./dom.js";

export class ConversationList {
  constructor({ list, empty, newButton, hooks }) {
    Object.assign(this, { list, empty, hooks });
    this.items = [];
    this.activeId = null;
    newButton.addEventListener("click", () => hooks.open(null));
  }

  async refresh() {
    try {
      this.items = await api.get("/api/conversations");
    } catch (error) {
      toast(`Could not load your chats: ${error.message}`, { kind: "error" });
      return;
    }
    this.render();
  }

  /** A conversation just made (before the server has its title): show it at the top right away. */
  add(conversation, firstText) {
    const title = conversation.title === "New conversation" ? firstText.split(/\s+/).join(" ").slice(0, 60) : conversation.title;
    this.items = [{ ...conversation, title }, ...this.items.filter((c) => c.id !== conversation.id)];
    this.activeId = conversation.id;
    this.render();
  }

  title(id) {
    return this.items.find((c) => c.id === id)?.title ?? null;
  }

  setActive(id) {
    this.activeId = id;
    for (const link of this.list.querySelectorAll(".conversation-link")) {
      if (link.dataset.id === id) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  render() {
    this.list.replaceChildren(...this.items.map((c) => this.item(c)));
    this.empty.hidden = this.items.length > 0;
  }

  item(conversation) {
    const link = h("a", {
      class: "conversation-link",
      href: `/?c=${encodeURIComponent(conversation.id)}`,
      dataset: { id: conversation.id },
      "aria-current": conversation.id === this.activeId ? "page" : null,
      text: conversation.title,
    });
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      this.hooks.open(conversation.id);
    });
    const li = h(
      "li",
      { class: "conversation", dataset: { id: conversation.id } },
      link,
      h(
        "div",
        { class: "conversation-actions" },
        iconButton("pencil", `Rename “${conversation.title}”`, { onclick: () => this.rename(li, conversation) }),
        iconButton("trash", `Delete “${conversation.title}”`, { onclick: () => this.remove(conversation) }),
      ),
    );
    return li;
  }

  rename(li, conversation) {
    const input = h("input", {
      class: "rename-input",
      value: conversation.title,
      maxlength: "200",
      "aria-label": `New title for “${conversation.title}”`,
    });
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          const updated = await api.patch(`/api/conversations/${encodeURIComponent(conversation.id)}`, { title });
          conversation.title = updated.title;
          this.hooks.renamed(updated);
        } catch (error) {
          toast(`Could not rename: ${error.message}`, { kind: "error" });
        }
      }
      this.render();
      this.list.querySelector(`.conversation[data-id="${CSS.escape(conversation.id)}"] .conversation-link`)?.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  async remove(conversation) {
    const ok = await confirmAction({
      title: "Delete this chat?",
      message: `“${conversation.title}” and its messages will be deleted. Its images stay in your library.`,
    });
    if (!ok) return;
    try {
      await api.delete(`/api/conversations/${encodeURIComponent(conversation.id)}`);
    } catch (error) {
      toast(`Could not delete: ${error.message}`, { kind: "error" });
      return;
    }
    this.items = this.items.filter((c) => c.id !== conversation.id);
    this.render();
    this.hooks.deleted(conversation.id);
    toast("Chat deleted.");
  }
}
