// Settings: your provider keys (where the operator left them to users; never shown back), which tool
// families can run and why not, and agents: their tools and the vision handoff switch.

import { api } from "./api.js";
import { confirmAction, fill, h, icon, setupTabs, toast } from "./dom.js";

const AGENT_KEY = `limner.agent:${document.body.dataset.user ?? ""}`; // per user: a browser may be shared
const DEFAULT_AGENT = "default";

export function chosenAgent() {
  return localStorage.getItem(AGENT_KEY) || DEFAULT_AGENT;
}

function chooseAgent(id) {
  if (id === DEFAULT_AGENT) localStorage.removeItem(AGENT_KEY);
  else localStorage.setItem(AGENT_KEY, id);
}

export function forgetAgent() {
  localStorage.removeItem(AGENT_KEY);
}

function sentence(text) {
  const value = String(text ?? "");
  return value ? value[0].toUpperCase() + value.slice(1) : value;
}

function pill(text, kind) {
  return h("span", { class: `pill pill-${kind}`, text });
}

function errorLine(error) {
  return `${error.message}${error.hint ? ` ${error.hint}` : ""}`;
}

export class Settings {
  constructor(dialog) {
    this.dialog = dialog;
    this.panels = {
      keys: dialog.querySelector("#panel-keys"),
      tools: dialog.querySelector("#panel-tools"),
      agents: dialog.querySelector("#panel-agents"),
    };
    this.tabs = setupTabs(dialog.querySelector('[role="tablist"]'));
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close();
    });
    this.families = [];
  }

  async open(tab = "tab-keys") {
    this.returnFocus = document.activeElement;
    this.tabs.select(tab);
    if (!this.dialog.open) this.dialog.showModal();
    for (const panel of Object.values(this.panels)) panel.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    try {
      const [keys, tools, agents] = await Promise.all([api.get("/api/keys"), api.get("/api/tools"), api.get("/api/agents")]);
      this.families = tools.families;
      this.renderKeys(keys.keys);
      this.renderTools();
      this.renderAgents(agents);
    } catch (error) {
      for (const panel of Object.values(this.panels)) {
        panel.replaceChildren(h("p", { class: "form-error", role: "alert", text: `Could not load settings: ${errorLine(error)}` }));
      }
    }
  }

  family(id) {
    return this.families.find((f) => f.id === id);
  }

  // --- keys ------------------------------------------------------------------------------------

  renderKeys(keys) {
    const userKeys = keys.filter((k) => k.accepts_user_key);
    const others = keys.filter((k) => !k.accepts_user_key);
    fill(
      this.panels.keys,
      h(
        "p",
        { class: "panel-intro" },
        userKeys.length
          ? "Where the operator left a provider to its users, enter your own key. Keys are stored encrypted, used only for your requests, and never shown again."
          : "Nothing to enter: every provider on this server has its key set by the operator, or the sandbox answers for it.",
      ),
      ...userKeys.map((k) => this.keyForm(k)),
      others.length ? h("h3", { class: "subheading", text: "Set up for you" }) : null,
      ...others.map((k) => this.keyInfo(k)),
    );
  }

  keyInfo(key) {
    const family = this.family(key.provider);
    const title = family?.title ?? key.provider;
    const sandbox = family?.is_sandbox;
    return h(
      "article",
      { class: "setting-card key-card", dataset: { provider: key.provider } },
      h("div", { class: "card-head" }, h("h4", { text: title }), sandbox ? pill("Sandbox", "sandbox") : pill("Operator key", "ok")),
      h("p", { class: "muted", text: sandbox ? "limner's emulators answer for this provider; no key is needed." : "The operator set a key for this provider." }),
    );
  }

  keyForm(key) {
    const family = this.family(key.provider);
    const title = family?.title ?? key.provider;
    const inputId = `key-${key.provider}`;
    const input = h("input", {
      id: inputId,
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: key.is_set ? "A key is saved: paste a new one to replace it" : "Paste your key",
      "aria-describedby": `${inputId}-help`,
    });
    const error = h("p", { class: "form-error", role: "alert", hidden: true });
    const status = key.is_set ? pill("Key saved", "ok") : pill("No key", "warn");
    const form = h(
      "form",
      { class: "setting-card key-card", dataset: { provider: key.provider } },
      h("div", { class: "card-head" }, h("h4", { text: title }), status),
      h("label", { for: inputId, text: `Your ${title} API key` }),
      h(
        "div",
        { class: "input-row" },
        input,
        h("button", { type: "submit", class: "button primary", text: "Save key" }),
        key.is_set ? h("button", { type: "button", class: "button danger-ghost", text: "Remove", "data-remove": "" }) : null,
      ),
      h(
        "p",
        { class: "field-help", id: `${inputId}-help` },
        family && !family.available
          ? `Not enabled on this server: ${family.reason}.`
          : key.is_set && key.updated_at
            ? `Saved ${new Date(key.updated_at).toLocaleString()}.`
            : "Used when the agent runs these tools for you.",
      ),
      error,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        error.textContent = "Paste a key first.";
        error.hidden = false;
        input.focus();
        return;
      }
      await this.keyChange(form, error, () => api.put(`/api/keys/${encodeURIComponent(key.provider)}`, { key: value }), `${title} key saved.`);
    });
    form.querySelector("[data-remove]")?.addEventListener("click", () =>
      this.keyChange(form, error, () => api.delete(`/api/keys/${encodeURIComponent(key.provider)}`), `${title} key removed.`),
    );
    return form;
  }

  async keyChange(form, error, change, done) {
    error.hidden = true;
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    try {
      await change();
      const keys = await api.get("/api/keys");
      this.families = (await api.get("/api/tools")).families;
      this.renderKeys(keys.keys);
      this.renderTools();
      toast(done);
      this.panels.keys.querySelector(`[data-provider="${CSS.escape(form.dataset.provider)}"] input`)?.focus();
    } catch (caught) {
      error.textContent = errorLine(caught);
      error.hidden = false;
      for (const button of form.querySelectorAll("button")) button.disabled = false;
    }
  }

  // --- tools -----------------------------------------------------------------------------------

  renderTools() {
    fill(
      this.panels.tools,
      h("p", { class: "panel-intro", text: "The tool families the agent can use here, and why one is not available." }),
      ...this.families.map((family) => {
        const silent = family.available && family.provider?.state === "not_answering";
        const state = !family.available
          ? pill("Not available", "off")
          : silent
            ? pill("Not answering", "off")
            : family.is_sandbox
              ? pill("Sandbox", "sandbox")
              : pill("Available", "ok");
        return h(
          "article",
          { class: `setting-card family-card${family.available ? "" : " is-off"}`, dataset: { family: family.id } },
          h("div", { class: "card-head" }, h("h4", { text: family.title }), state),
          family.reason ? h("p", { class: "family-reason", text: `${sentence(family.reason)}.` }) : null,
          silent ? h("p", { class: "family-reason family-probe", text: `${family.provider.detail} ${family.provider.hint}` }) : null,
          family.model || family.backend
            ? h("p", { class: "muted small" }, [family.backend ? `Backend ${family.backend}` : null, family.model ? `model ${family.model}` : null].filter(Boolean).join(", "))
            : null,
          family.accepts_user_key
            ? h("p", { class: "small" }, icon("key"), family.has_user_key ? " Uses your key." : " Needs your key: enter it under Keys.")
            : null,
          h("ul", { class: "tool-chips", "aria-label": `Tools of ${family.title}` }, family.tools.map((tool) => h("li", {}, h("code", { text: tool.name, title: tool.description })))),
        );
      }),
    );
  }

  // --- agents ----------------------------------------------------------------------------------

  renderAgents(agents) {
    let current = chosenAgent();
    if (!agents.some((a) => a.id === current)) {
      current = DEFAULT_AGENT;
      forgetAgent();
    }
    const select = h(
      "select",
      { id: "agent-select", class: "select" },
      agents.map((agent) => h("option", { value: agent.id, text: agent.id === DEFAULT_AGENT ? "Built-in agent" : agent.name, selected: agent.id === current })),
    );
    const detail = h("div", { class: "agent-detail" });
    const show = () => {
      const agent = agents.find((a) => a.id === select.value);
      detail.replaceChildren(agent.id === DEFAULT_AGENT ? this.defaultAgent(agent) : this.agentForm(agent));
    };
    select.addEventListener("change", () => {
      chooseAgent(select.value);
      show();
    });
    fill(
      this.panels.agents,
      h(
        "div",
        { class: "field" },
        h("label", { for: "agent-select", text: "Agent for new chats" }),
        select,
        h("p", { class: "field-help", text: "A chat keeps the agent it started with." }),
      ),
      detail,
    );
    show();
  }

  defaultAgent() {
    const create = h("button", { type: "button", class: "button", text: "Create your own agent" });
    create.addEventListener("click", async () => {
      try {
        const mine = (await api.get("/api/agents")).filter((a) => a.id !== DEFAULT_AGENT);
        const names = new Set(mine.map((a) => a.name));
        let name = "My agent";
        for (let n = 2; names.has(name); n += 1) name = `My agent ${n}`;
        const agent = await api.post("/api/agents", { name });
        chooseAgent(agent.id);
        this.renderAgents(await api.get("/api/agents"));
        toast(`${agent.name} created; new chats use it.`);
      } catch (error) {
        toast(`Could not create an agent: ${errorLine(error)}`, { kind: "error" });
      }
    });
    return h(
      "article",
      { class: "setting-card" },
      h("div", { class: "card-head" }, h("h4", { text: "Built-in agent" }), pill("Default", "ok")),
      h("p", {
        text: "Offers every available tool family and hands new images to the chat model right after they are made, when the model can see. Create your own agent to choose its tools or turn the vision handoff off.",
      }),
      create,
    );
  }

  agentForm(agent) {
    const families = this.families.filter((f) => f.id !== "library");
    const everything = agent.tool_families === null;
    const error = h("p", { class: "form-error", role: "alert", hidden: true });
    const boxes = families.map((family) =>
      h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "family", value: family.id, checked: everything || agent.tool_families.includes(family.id) }),
        h("span", {}, family.title, family.available ? null : h("span", { class: "muted", text: ` (not available: ${family.reason})` })),
      ),
    );
    const vision = h("input", { type: "checkbox", role: "switch", id: "agent-vision", checked: agent.vision_handoff });
    const form = h(
      "form",
      { class: "setting-card agent-form stack", dataset: { agentId: agent.id } },
      h("div", { class: "field" }, h("label", { for: "agent-name", text: "Name" }), h("input", { id: "agent-name", value: agent.name, maxlength: "100", required: true })),
      h("div", { class: "field" }, h("label", { for: "agent-instructions", text: "Instructions" }), h("textarea", { id: "agent-instructions", rows: "5" }, agent.instructions)),
      h(
        "fieldset",
        { class: "field" },
        h("legend", { text: "Tool families" }),
        h("p", { class: "field-help", text: "Your image library (image_list, image_view) is always available." }),
        boxes,
      ),
      h(
        "div",
        { class: "switch-row" },
        h("label", { class: "switch", for: "agent-vision" }, vision, h("span", { class: "switch-track", "aria-hidden": "true" }), h("span", { text: "Vision handoff" })),
        h("p", { class: "field-help", text: "On: right after a tool makes images, the chat model sees them (when it can see). Off: it gets only their IDs." }),
      ),
      error,
      h(
        "div",
        { class: "dialog-actions" },
        h("button", { type: "button", class: "button danger-ghost", text: "Delete agent", "data-delete": "" }),
        h("button", { type: "submit", class: "button primary", text: "Save agent" }),
      ),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const checked = [...form.querySelectorAll('input[name="family"]:checked')].map((box) => box.value);
      const body = {
        name: form.querySelector("#agent-name").value.trim() || agent.name,
        instructions: form.querySelector("#agent-instructions").value,
        vision_handoff: vision.checked,
      };
      if (!(everything && checked.length === families.length)) body.tool_families = checked;
      try {
        await api.patch(`/api/agents/${encodeURIComponent(agent.id)}`, body);
        this.renderAgents(await api.get("/api/agents"));
        toast("Agent saved.");
      } catch (caught) {
        error.textContent = errorLine(caught);
        error.hidden = false;
      }
    });
    form.querySelector("[data-delete]").addEventListener("click", async () => {
      const ok = await confirmAction({ title: "Delete this agent?", message: `Chats that use “${agent.name}” continue with the built-in agent.` });
      if (!ok) return;
      try {
        await api.delete(`/api/agents/${encodeURIComponent(agent.id)}`);
        forgetAgent();
        this.renderAgents(await api.get("/api/agents"));
        toast("Agent deleted.");
      } catch (caught) {
        toast(`Could not delete the agent: ${errorLine(caught)}`, { kind: "error" });
      }
    });
    return form;
  }
}
