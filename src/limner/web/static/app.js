// The chat page: wires the conversation list, the chat, the composer, the image library, the viewer
// and the settings together, and keeps the open conversation in the address (?c=...).

import { api } from "./api.js";
import { Chat } from "./chat.js";
import { Composer } from "./composer.js";
import { ConversationList } from "./conversations.js";
import { confirmAction, toast } from "./dom.js";
import { Library } from "./library.js";
import { Settings, chosenAgent, forgetAgent } from "./settings.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const narrow = window.matchMedia("(max-width: 800px)");

// --- drawers (the side panels under 800 px) ------------------------------------------------------

const drawers = {
  conversations: { panel: $("conversations-panel"), toggle: $("toggle-conversations") },
  library: { panel: $("library-panel"), toggle: $("toggle-library") },
};

function setDrawer(name, open) {
  const { panel, toggle } = drawers[name];
  if (narrow.matches) {
    if (!open && panel.contains(document.activeElement)) toggle.focus(); // focus leaves the closing drawer
    panel.classList.toggle("is-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    const anyOpen = Object.values(drawers).some((d) => d.panel.classList.contains("is-open"));
    $("scrim").hidden = !anyOpen;
    if (open) {
      for (const [other, drawer] of Object.entries(drawers)) if (other !== name) setDrawer(other, false);
      panel.querySelector("button, a, select, input")?.focus();
    }
  } else if (name === "library") {
    document.body.classList.toggle("library-hidden", !open);
    toggle.setAttribute("aria-expanded", String(open));
    localStorage.setItem("limner.library", open ? "shown" : "hidden");
  }
}

function drawerOpen(name) {
  const { panel } = drawers[name];
  return narrow.matches ? panel.classList.contains("is-open") : !document.body.classList.contains("library-hidden");
}

function closeDrawers() {
  if (!narrow.matches) return;
  for (const name of Object.keys(drawers)) setDrawer(name, false);
}

function layout() {
  $("scrim").hidden = true;
  for (const { panel } of Object.values(drawers)) panel.classList.remove("is-open");
  const libraryShown = localStorage.getItem("limner.library") !== "hidden";
  drawers.conversations.toggle.setAttribute("aria-expanded", String(!narrow.matches));
  drawers.library.toggle.setAttribute("aria-expanded", String(narrow.matches ? false : libraryShown));
  document.body.classList.toggle("library-hidden", !narrow.matches && !libraryShown);
}

document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault(); // focus the box without a #fragment in the address
  $("composer-input").focus();
});
$("toggle-conversations").addEventListener("click", () => setDrawer("conversations", !drawerOpen("conversations")));
$("toggle-library").addEventListener("click", () => setDrawer("library", !drawerOpen("library")));
$("scrim").addEventListener("click", closeDrawers);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && narrow.matches && !document.querySelector("dialog[open]")) closeDrawers();
});
narrow.addEventListener("change", layout);
layout();

// --- the parts -----------------------------------------------------------------------------------

const composer = new Composer({
  form: $("composer"),
  textarea: $("composer-input"),
  fileInput: $("file-input"),
  attachButton: $("attach-button"),
  list: $("attachments"),
  sendButton: $("send-button"),
  stopButton: $("stop-button"),
  help: $("composer-help"),
  dropZone: $("chat"),
  dropOverlay: $("drop-overlay"),
});

async function deleteImage(id) {
  const ok = await confirmAction({
    title: "Delete this image?",
    message: "It leaves your library for good. Chats that showed it will say it was deleted.",
  });
  if (!ok) return false;
  try {
    await api.delete(`/api/images/${encodeURIComponent(id)}`);
  } catch (error) {
    toast(`Could not delete the image: ${error.message}`, { kind: "error" });
    return false;
  }
  library.remove(id);
  chat.imageDeleted(id);
  composer.forget(id);
  toast("Image deleted.");
  return true;
}

function attach(image) {
  composer.attachImage(image);
  closeDrawers();
  toast("Attached to your next message.");
}

const viewer = new Viewer($("viewer"), { attach, delete: deleteImage });

const library = new Library({
  grid: $("library-grid"),
  empty: $("library-empty"),
  more: $("library-more"),
  filter: $("library-filter"),
  scrollRoot: $("library-scroll"),
  hooks: {
    open: (id) => viewer.open(id),
    attach,
    delete: deleteImage,
    failed: (error) => toast(`Could not load your images: ${error.message}`, { kind: "error" }),
  },
});
composer.onUploaded = (image) => library.prepend(image);

const conversations = new ConversationList({
  list: $("conversation-list"),
  empty: $("conversations-empty"),
  newButton: $("new-chat"),
  hooks: {
    open: (id) => go(id),
    renamed: (conversation) => {
      if (chat.conversationId === conversation.id) chat.setTitle(conversation.title);
    },
    deleted: (id) => {
      chat.forget(id);
      if (currentParam() === id) history.replaceState(null, "", "/");
    },
  },
});

const chat = new Chat({
  thread: $("thread"),
  scroller: $("thread-scroller"),
  title: $("chat-title"),
  composer,
  hooks: {
    openImage: (id) => viewer.open(id),
    missing: () => {
      history.replaceState(null, "", "/");
      conversations.setActive(null);
    },
    imageReady: (image) => library.prepend(image),
    agentMissing: () => forgetAgent(),
    newConversationBody: () => (chosenAgent() === "default" ? {} : { agent_id: chosenAgent() }),
    created: (conversation, text) => {
      conversations.add(conversation, text);
      history.pushState(null, "", `/?c=${encodeURIComponent(conversation.id)}`);
      chat.setTitle(conversations.title(conversation.id));
    },
    turnEnded: async (id) => {
      await conversations.refresh();
      conversations.setActive(chat.conversationId);
      if (chat.conversationId === id) chat.setTitle(conversations.title(id) ?? chat.title.textContent);
    },
  },
});

const settings = new Settings($("settings"));
$("open-settings").addEventListener("click", () => settings.open());

// --- navigation ----------------------------------------------------------------------------------

function currentParam() {
  return new URLSearchParams(window.location.search).get("c");
}

async function go(id, { push = true } = {}) {
  if (push && id !== currentParam()) history.pushState(null, "", id ? `/?c=${encodeURIComponent(id)}` : "/");
  conversations.setActive(id);
  closeDrawers();
  await chat.open(id, { title: id ? conversations.title(id) : undefined });
  composer.focus();
}

window.addEventListener("popstate", () => go(currentParam(), { push: false }));

$("sign-out").addEventListener("click", async () => {
  try {
    await api.post("/api/auth/signout");
  } catch (error) {
    toast(`Could not sign out: ${error.message}`, { kind: "error" });
    return;
  }
  window.location.assign("/signin");
});

// --- start ---------------------------------------------------------------------------------------

await Promise.all([conversations.refresh(), library.reset()]);
await go(currentParam(), { push: false });
document.body.dataset.ready = "true";
