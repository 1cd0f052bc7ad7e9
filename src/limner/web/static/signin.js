// The sign-in page: sign in, or create an account while registration is open.

import { api } from "./api.js";
import { setupTabs } from "./dom.js";

const tablist = document.querySelector('[role="tablist"]');
if (tablist) {
  setupTabs(tablist, (tab) => {
    const panel = document.getElementById(tab.getAttribute("aria-controls"));
    panel.querySelector("input")?.focus();
  });
}

function wire(formId, path, errorId) {
  const form = document.getElementById(formId);
  if (!form) return;
  const error = document.getElementById(errorId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.elements.name.value.trim();
    const password = form.elements.password.value;
    if (!name || !password) {
      show(error, "Enter your name and a password.");
      (name ? form.elements.password : form.elements.name).focus();
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    error.hidden = true;
    try {
      await api.post(path, { name, password });
      window.location.assign("/");
    } catch (caught) {
      show(error, caught.hint ? `${caught.message} ${caught.hint}` : caught.message);
      form.elements.password.select();
      form.elements.password.focus();
      button.disabled = false;
    }
  });
}

function show(error, text) {
  error.textContent = text;
  error.hidden = false;
}

wire("signin-form", "/api/auth/signin", "signin-error");
wire("signup-form", "/api/auth/signup", "signup-error");
document.getElementById("signin-name").focus();
