// The cart: products and quantities, in memory like the session.

import type { Product } from "../../gen/shop/catalog/v1/catalog_pb.js";

export interface Line {
  product: Product;
  quantity: number;
}

const lines = new Map<string, Line>();
const listeners: Array<() => void> = [];

function changed(): void {
  for (const listener of listeners) listener();
}

export function onCartChange(listener: () => void): void {
  listeners.push(listener);
}

export function add(product: Product, quantity = 1): void {
  const line = lines.get(product.productId);
  if (line) line.quantity += quantity;
  else lines.set(product.productId, { product, quantity });
  changed();
}

export function setQuantity(productId: string, quantity: number): void {
  const line = lines.get(productId);
  if (!line) return;
  if (quantity <= 0) lines.delete(productId);
  else line.quantity = quantity;
  changed();
}

export function contents(): Line[] {
  return [...lines.values()];
}

export function count(): number {
  let n = 0;
  for (const line of lines.values()) n += line.quantity;
  return n;
}

export function clear(): void {
  lines.clear();
  changed();
}
