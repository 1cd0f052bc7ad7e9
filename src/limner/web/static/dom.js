// Small DOM helpers. Every piece of text goes in through textContent or a text node: nothing here
// parses markup, so a string from the server or a model can never become HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * Create an element. `props`: `class`, `text`, `dataset`, `on<event>` (functions), boolean attributes
 * (true adds, false/null/undefined skips), any other attribute as a string.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Append children: nodes, strings (as text), arrays of either; null and false are skipped. */
export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** An icon from the sprite, hidden from assistive technology (the control carries the label). */
export function icon(name, extraClass = "") {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", `icon ${extraClass}`.trim());
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG_NS, "use");
  use.setAttribute("href", `/static/icons.svg#${name}`);
  svg.append(use);
  return svg;
}

/** A button with an icon and a label that is visible, or only for screen readers (`hideLabel`). */
export function iconButton(name, label, { hideLabel = true, className = "icon-button", ...props } = {}) {
  return h(
    "button",
    { type: "button", class: className, title: hideLabel ? label : null, ...props },
    icon(name),
    h("span", { class: hideLabel ? "visually-hidden" : "label-text", text: label }),
  );
}

/** Prompts can be long (a model writes them): labels and alt texts take the start. */
export function shorten(text, max = 120) {
  const line = String(text ?? "").replace(/\s+/g, " ").trim();
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`;
}

/** Replace an element's children (null and false skipped, strings as text). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Human sizes: 1.2 MB. */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : dateFormat.format(date);
}

/** Show a short message in the toast area (a polite live region). */
export function toast(message, { kind = "info", timeout = 5000 } = {}) {
  const area = document.getElementById("toasts");
  if (!area) return;
  const item = h("div", { class: `toast toast-${kind}` }, icon(kind === "error" ? "alert" : "check"), h("span", { text: message }));
  area.append(item);
  setTimeout(() => item.remove(), timeout);
}

/** Ask before something that cannot be undone; resolves to true when confirmed. */
export function confirmAction({ title, message, confirmLabel = "Delete" }) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-message").textContent = message;
  dialog.querySelector("#confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    dialog.querySelector("#confirm-cancel").focus();
  });
}

/** Wire a WAI-ARIA tab list: click and arrow keys switch panels. */
export function setupTabs(tablist, onSelect = () => {}) {
  const tabs = [...tablist.querySelectorAll('[role="tab"]')];
  const select = (tab, focus = false) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    onSelect(tab);
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const moves = { ArrowRight: 1, ArrowLeft: -1 };
      if (event.key in moves) {
        event.preventDefault();
        select(tabs[(index + moves[event.key] + tabs.length) % tabs.length], true);
      } else if (event.key === "Home" || event.key === "End") {
        event.preventDefault();
        select(tabs[event.key === "Home" ? 0 : tabs.length - 1], true);
      }
    });
  }
  return { select: (id) => select(tabs.find((t) => t.id === id)) };
}
