// What a shop's app installs: `npm pack` (which builds through `prepack`) must yield the built
// module, its types, README and LICENSE, and no sources or tests. Reads the real tarball.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

describe("npm pack", () => {
  let dir = "";
  let tarball = "";
  let entries: string[] = [];

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "order-status-client-pack-"));
    execFileSync(npm, ["pack", "--silent", "--pack-destination", dir], { cwd: root, stdio: "pipe" });
    const packed = readdirSync(dir).filter((f) => f.endsWith(".tgz"));
    expect(packed).toHaveLength(1);
    tarball = join(dir, packed[0] ?? "");
    entries = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" })
      .split("\n")
      .filter((e) => e && !e.endsWith("/"))
      .map((e) => e.replace(/^package\//, ""));
  }, 120_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("contains the built module, its types, README and LICENSE", () => {
    expect(entries).toEqual(
      expect.arrayContaining(["package.json", "README.md", "LICENSE", "dist/index.js", "dist/index.d.ts"]),
    );
    // Every module index.js re-exports from is packed too.
    for (const module of ["client", "backoff", "connection", "recent-ids", "types"]) {
      expect(entries).toContain(`dist/${module}.js`);
      expect(entries).toContain(`dist/${module}.d.ts`);
    }
  });

  it("contains no sources, tests or tool configuration", () => {
    const unexpected = entries.filter(
      (e) =>
        !e.startsWith("dist/") && !["package.json", "README.md", "LICENSE"].includes(e),
    );
    expect(unexpected).toEqual([]);
    expect(entries.filter((e) => /\.test\.|(^|\/)(src|test)\//.test(e))).toEqual([]);
    expect(entries.filter((e) => e.endsWith(".ts") && !e.endsWith(".d.ts"))).toEqual([]);
  });

  it("has a package.json a shop's app can install", () => {
    const manifest = JSON.parse(
      execFileSync("tar", ["-xzOf", tarball, "package/package.json"], { encoding: "utf8" }),
    ) as Record<string, unknown>;
    expect(manifest["private"]).toBeUndefined();
    expect(manifest["license"]).toBe("MIT");
    // SignalR comes from the app, so the app and this client share one copy of it.
    expect(manifest["peerDependencies"]).toEqual({
      "@microsoft/signalr": expect.stringMatching(/^\^10\./),
      "@microsoft/signalr-protocol-msgpack": expect.stringMatching(/^\^10\./),
    });
    expect(manifest["dependencies"]).toBeUndefined();
  });
});
