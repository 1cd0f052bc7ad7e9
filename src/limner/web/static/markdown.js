// A tiny, safe markdown renderer for the assistant's answers.
//
// It builds DOM nodes directly and puts all text in through text nodes, so nothing in the input can
// become markup: raw HTML shows as the characters typed. What it understands: paragraphs (blank
// lines), line breaks, **bold**, *italic*, `code`, ``` fenced code ```, "- " and "1. " lists,
// [links](https://...) and bare http(s) URLs (no other scheme ever becomes a link), and image IDs
// (img_...), which become buttons the page can open in the viewer.

const IMAGE_ID = /^img_[0-9A-HJKMNP-TV-Z]{26}$/;

// One alternation, tried left to right at each position. Order matters: code first (nothing inside
// it is parsed), then links, bare URLs, image IDs, bold, italic.
const INLINE = new RegExp(
  [
    /`(?<code>[^`\n]+)`/.source,
    /\[(?<label>[^\]\n]+)\]\((?<href>[^)\s]+)\)/.source,
    /(?<url>\bhttps?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]])/.source,
    /(?<image>\bimg_[0-9A-HJKMNP-TV-Z]{26}\b)/.source,
    /\*\*(?<bold>[^\s*](?:[^*]*?[^\s*])?)\*\*/.source,
    /(?<![\w*])\*(?<italic>[^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])/.source,
    /(?<![\w_])_(?<italic2>[^\s_](?:[^_]*?[^\s_])?)_(?![\w_])/.source,
  ].join("|"),
  "g",
);

/** The URL when it is http(s), else null: javascript:, data: and friends never become links. */
export function safeHref(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function link(href, children) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.append(...children);
  return a;
}

function imageRef(id) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "image-ref";
  button.dataset.imageId = id;
  button.textContent = id;
  button.title = "Open this image";
  return button;
}

/** Inline markup of one line into nodes. `links: false` inside a link's label (no nested links). */
export function renderInline(text, { links = true } = {}) {
  const nodes = [];
  let last = 0;
  INLINE.lastIndex = 0;
  for (const match of text.matchAll(INLINE)) {
    const groups = match.groups;
    const node = inlineNode(groups, links);
    if (node === null) continue; // not allowed here: left as text
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(node);
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function inlineNode(groups, links) {
  if (groups.code !== undefined) {
    const code = document.createElement("code");
    code.textContent = groups.code;
    return code;
  }
  if (groups.label !== undefined) {
    const href = safeHref(groups.href);
    if (!links || href === null) return null;
    return link(href, renderInline(groups.label, { links: false }));
  }
  if (groups.url !== undefined) {
    const href = safeHref(groups.url);
    return links && href !== null ? link(href, [document.createTextNode(groups.url)]) : null;
  }
  if (groups.image !== undefined) {
    return IMAGE_ID.test(groups.image) && links ? imageRef(groups.image) : null;
  }
  const [tag, inner] =
    groups.bold !== undefined ? ["strong", groups.bold] : ["em", groups.italic ?? groups.italic2];
  const el = document.createElement(tag);
  el.append(...renderInline(inner, { links }));
  return el;
}

function paragraph(lines) {
  const p = document.createElement("p");
  lines.forEach((line, index) => {
    if (index > 0) p.append(document.createElement("br"));
    p.append(...renderInline(line));
  });
  return p;
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;

function list(lines, ordered) {
  const el = document.createElement(ordered ? "ol" : "ul");
  for (const line of lines) {
    const li = document.createElement("li");
    li.append(...renderInline(line.match(ordered ? NUMBERED : BULLET)[1]));
    el.append(li);
  }
  return el;
}

function codeBlock(lines) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = lines.join("\n");
  pre.append(code);
  return pre;
}

/** Split text into blocks: fenced code, lists and paragraphs (separated by blank lines). */
function blocks(text) {
  const out = [];
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let current = null;
  const flush = () => {
    if (current) out.push(current);
    current = null;
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    if (/^\s*```/.test(line)) {
      flush();
      const code = [];
      for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i += 1) code.push(lines[i]);
      out.push({ kind: "code", lines: code });
      continue;
    }
    if (line.trim() === "") {
      flush();
      continue;
    }
    const kind = BULLET.test(line) ? "ul" : NUMBERED.test(line) ? "ol" : "p";
    if (!current || current.kind !== kind) {
      flush();
      current = { kind, lines: [] };
    }
    current.lines.push(line);
  }
  flush();
  return out;
}

/** Render markdown text into a DocumentFragment of safe nodes. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  for (const block of blocks(String(text ?? ""))) {
    if (block.kind === "code") fragment.append(codeBlock(block.lines));
    else if (block.kind === "p") fragment.append(paragraph(block.lines));
    else fragment.append(list(block.lines, block.kind === "ol"));
  }
  return fragment;
}
