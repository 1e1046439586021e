// A notes list on PluresDB in the page: every note is a node `note:<time>`,
// stored in IndexedDB (reload the page: the notes stay), written as signed
// operations by this page's own peer id, and shared through a node when the
// page is given one (its browser WebSocket and a ticket).
import { open } from "../src/index.js";

const db = await open("notes");
const list = document.querySelector("#notes");

async function render() {
  list.replaceChildren();
  for (const note of await db.list("note:")) {
    const item = document.createElement("li");
    item.className = note.value.done ? "done" : "";
    const done = Object.assign(document.createElement("input"), { type: "checkbox", checked: !!note.value.done });
    done.onchange = () => db.update(note.id, { done: done.checked });
    const text = Object.assign(document.createElement("span"), { textContent: note.value.text });
    const remove = Object.assign(document.createElement("button"), { textContent: "✕", title: "delete" });
    remove.onclick = () => db.delete(note.id);
    item.append(done, text, remove);
    list.append(item);
  }
  await showStatus();
}

async function showStatus() {
  const status = await db.status();
  const ops = Object.values(status.version_vector).reduce((a, b) => a + b, 0);
  const link = status.link.state === "none" ? "offline" : status.link.state + (status.link.reason ? ` (${status.link.reason})` : "");
  document.querySelector("#status").textContent = `peer ${status.peer_id} · ${ops} operations · ${link}`;
}

// The node to share through, remembered by this browser.
const saved = JSON.parse(localStorage.getItem("pluresdb-notes-link") ?? "null");
if (saved) {
  document.querySelector("#url").value = saved.url;
  document.querySelector("#ticket").value = saved.ticket;
  db.connect(saved.url, saved.ticket);
}
document.querySelector("#link").onsubmit = (event) => {
  event.preventDefault();
  const link = { url: document.querySelector("#url").value.trim(), ticket: document.querySelector("#ticket").value.trim() };
  localStorage.setItem("pluresdb-notes-link", JSON.stringify(link));
  db.connect(link.url, link.ticket);
};
setInterval(showStatus, 1000);

document.querySelector("#add").onsubmit = async (event) => {
  event.preventDefault();
  const input = document.querySelector("#text");
  await db.put(`note:${Date.now().toString(36)}`, { text: input.value, done: false });
  input.value = "";
};

// Every stored change (from this page; from peers once it syncs) redraws.
db.watch("note:", render);
await render();
