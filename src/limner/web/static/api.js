// The HTTP API as the page uses it: the session cookie goes by itself, the CSRF token goes in
// X-CSRF-Token on every change, and every failure becomes an ApiError with limner's message and hint.

const CHANGES = new Set(["POST", "PUT", "PATCH", "DELETE"]);

let csrfToken = document.body?.dataset.csrf ?? "";

export function setCsrfToken(token) {
  csrfToken = token ?? "";
}

/** A failure with what to tell the person: limner's `{error: {code, message, hint, provider}}`. */
export class ApiError extends Error {
  constructor({ status = 0, code = "error", message = "Something went wrong.", hint = null, provider = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.hint = hint;
    this.provider = provider;
  }

  static async from(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON (a proxy's error page): fall through to a generic message
    }
    const error = body?.error ?? {};
    return new ApiError({
      status: response.status,
      code: error.code ?? `http_${response.status}`,
      message: error.message ?? `The server answered ${response.status} ${response.statusText}.`,
      hint: error.hint ?? null,
      provider: error.provider ?? null,
    });
  }
}

/** The connection failed: nothing came back from the server. */
export class NetworkError extends ApiError {
  constructor() {
    super({
      code: "connection_lost",
      message: "Could not reach limner.",
      hint: "Check your connection, then try again.",
    });
    this.name = "NetworkError";
  }
}

/** Send a request; resolves to the parsed JSON (null for 204), rejects with ApiError. */
export async function request(method, path, { json, form, signal, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  if (CHANGES.has(method)) headers["X-CSRF-Token"] = csrfToken;
  let body;
  if (form !== undefined) body = form;
  else if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, credentials: "same-origin" });
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new NetworkError();
  }
  if (response.status === 401 && !path.startsWith("/api/auth/sign")) {
    window.location.assign("/signin"); // the session ended: sign in again
  }
  if (!response.ok) throw await ApiError.from(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, json, options) => request("POST", path, { ...options, json }),
  put: (path, json, options) => request("PUT", path, { ...options, json }),
  patch: (path, json, options) => request("PATCH", path, { ...options, json }),
  delete: (path, options) => request("DELETE", path, options),
  upload(file, options) {
    const form = new FormData();
    form.append("file", file, file.name || "pasted-image");
    return request("POST", "/api/images", { ...options, form });
  },
};

/**
 * Parses a text/event-stream incrementally: feed it decoded text, get `{event, data}` objects back.
 * Comment lines (": keep-alive") are skipped; several `data:` lines join with newlines.
 */
export class EventStreamParser {
  constructor() {
    this.buffer = "";
    this.event = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    const events = [];
    let newline;
    while ((newline = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, newline);
      const width = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      this.buffer = this.buffer.slice(newline + width);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0 && !this.event) return null;
      const event = { event: this.event || "message", data: this.data.join("\n") };
      this.event = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    return null;
  }
}

/**
 * POST a message and yield the answer's events as `{event, data}` with `data` parsed from JSON.
 * `fetch` with a stream reader, because EventSource cannot POST. Rejects with ApiError when the
 * request is refused before the stream starts, NetworkError when the connection fails.
 */
export async function* sendMessage(conversationId, body, { signal } = {}) {
  const response = await request("POST", `/api/conversations/${encodeURIComponent(conversationId)}/messages`, {
    json: body,
    signal,
    raw: true,
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventStreamParser();
  let finished = false;
  try {
    while (true) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error?.name === "AbortError") throw error;
        throw new NetworkError();
      }
      finished = chunk.done;
      const text = chunk.done ? decoder.decode() : decoder.decode(chunk.value, { stream: true });
      for (const { event, data } of parser.push(text)) {
        let parsed = {};
        try {
          parsed = data ? JSON.parse(data) : {};
        } catch {
          continue; // a malformed event is skipped, never shown raw
        }
        yield { event, data: parsed };
      }
      if (chunk.done) return;
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {}); // the consumer left early: close the connection
  }
}
