// Code written against the generated types (api.d.ts), as the browser
// package and the web UI use them. tests/openapi_tools.rs compiles it with
// `tsc --strict --noEmit`: a change of the API that breaks such code breaks
// this build.
import type { components, operations, paths } from "./api";

type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;

export type Node = components["schemas"]["NodeDoc"];
export type Receipt = Json<paths["/nodes/{id}"]["put"]["responses"][200]>;
export type NodePage = Json<operations["list_nodes"]["responses"][200]>;
export type ApiError = components["schemas"]["ErrorDoc"];
export type ChangeMessage = components["schemas"]["ChangeMessage"];

/** The name of a node's first link target, or "" when it has none. */
export function firstLinkTarget(node: Node): string {
  return node.links.length > 0 ? node.links[0].to : "";
}

/** The next page's `after`, or null on the last page. */
export function nextAfter(page: NodePage): string | null {
  return page.next_after ?? null;
}

/** What a message of the /changes WebSocket says, in words. */
export function describe(message: ChangeMessage): string {
  switch (message.type) {
    case "subscribed":
      return `subscribed at ${Object.keys(message.version).length} origins`;
    case "change":
      return `${message.op.type} ${message.op.node_id}${message.node === null ? " (deleted)" : ""}`;
    case "lagged":
      return `lagged: ${message.missed} missed`;
    case "error":
      return `error: ${message.error}`;
  }
}

/** The query `POST /import` takes. */
export const importQuery: NonNullable<operations["import"]["parameters"]["query"]> = { on_error: "skip", first_line: 1 };

export const receipt: Receipt = { id: "user:1", op: "12D3KooW.../1", timestamp: "1.0" };
export const error: ApiError = { error: "no such node" };
